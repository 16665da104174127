"""Speed of every stage, on real data, with the very functions run.py uses.

    python bench.py                       # MNIST normal class 0 (and CIFAR-10 airplane if its batches exist)
    python bench.py --reps 7 --device cuda
    python bench.py --datasets mnist --pool-ab 12   # also: training pooling, fast_ops.MaxPool2 vs F.max_pool2d
    python bench.py --datasets cifar10 --widths 1 2 --batch-size 64   # only the rotations' cost per --width

For each stage: seconds per epoch (median of --reps epochs after --warmup epochs), images per second,
and the fraction of this machine's float32 matmul throughput (measured in the same run) that the stage's
arithmetic reaches. The arithmetic of a stage is counted with torch.utils.flop_counter.FlopCounterMode
(convolutions and matrix products, forward and backward), not estimated by hand.
Transformation prediction runs at run.py's defaults for the data set (its transformations, weight decay, batch
size, precise BN where on). After each table: a class's seconds, the autoencoder at the matrix's 10 epochs
against transformation prediction's default epochs (`per_class`), and one checkpoint of the autoencoder stage.
Do not run it beside another torch process: two processes' threads compete and the figures mean nothing.
"""
import argparse
import os
import statistics
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import ae
import data
import fast_ops
import geom
import ocnn
import rcae
import settings
import svdd
import training


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_flops_per_second(device, n=2048, reps=10):
    """The machine's float32 matmul throughput: 2 n^3 FLOP per n x n product, median of reps."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


def count_flops(fn):
    """FLOP of one call of fn (forward and backward if fn does both)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def timed(fn, device, reps, warmup):
    """Median seconds of fn() over reps calls after warmup calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def epoch_seconds(history, warmup):
    """Median of the per-epoch seconds that the training functions record, the first `warmup` dropped."""
    return statistics.median(h["seconds"] for h in history[warmup:])


def bench(dataset, normal_class, device, reps, warmup, batch_size):
    d = data.one_class_split(dataset, normal_class, root="data", device=device)
    x, x_test, n = d.x_train, d.x_test, len(d.x_train)
    epochs = warmup + reps
    quiet = dict(batch_size=batch_size, verbose=False)
    port = dict(weight_decay=0.5e-3, milestones=[50])    # the PyTorch port's MNIST autoencoder settings
    torch.manual_seed(0)
    model = ae.build_autoencoder(dataset).to(device)
    # FLOP of one training step of each network on one batch, forward and backward.
    xb = x[:batch_size]
    step_ae = count_flops(lambda: ae.reconstruction_error(model(xb), xb).mean().backward())
    phi = ae.encoder_copy(model)
    step_phi = count_flops(lambda: phi(xb).pow(2).sum().backward())
    fwd_ae = count_flops(lambda: ae.reconstruct(model, x_test))
    fwd_phi = count_flops(lambda: ae.encode(phi, x_test))
    n_batches = -(-n // batch_size)

    rows = []
    hist = ae.train_autoencoder(model, x, epochs=epochs, **port, **quiet)
    rows.append(("AE training epoch", epoch_seconds(hist, warmup), n, step_ae * n_batches))
    rows.append(("RCAE N-step", timed(lambda: rcae.n_step(model, x, 0.1), device, reps, 1), n,
                 fwd_ae * n / len(x_test)))
    rows.append(("AE scoring the test set", timed(lambda: ae.reconstruction_scores(model, x_test), device,
                                                   reps, 1), len(x_test), fwd_ae))
    # The same two stages with the reference formulation of the decoder (deconv(up2(x))), in this run.
    fast_ops.UPSAMPLE = False
    plain = ae.build_autoencoder(dataset).to(device)
    step_plain = count_flops(lambda: ae.reconstruction_error(plain(xb), xb).mean().backward())
    hist = ae.train_autoencoder(plain, x, epochs=epochs, **port, **quiet)
    rows.append(("  same, plain deconv(up2(x))", epoch_seconds(hist, warmup), n, step_plain * n_batches))
    rows.append(("  scoring, plain deconv(up2(x))", timed(lambda: ae.reconstruction_scores(plain, x_test),
                                                          device, reps, 1), len(x_test),
                 count_flops(lambda: ae.reconstruct(plain, x_test))))
    fast_ops.UPSAMPLE = True
    fast_ops.POOL = False                                 # scoring with F.max_pool2d (argmax indices computed)
    rows.append(("  scoring, F.max_pool2d", timed(lambda: ae.reconstruction_scores(model, x_test), device,
                                                  reps, 1), len(x_test), fwd_ae))
    fast_ops.POOL = True
    c, R, hist = svdd.train_svdd(ae.encoder_copy(model), x, objective="svdd", epochs=epochs, weight_decay=0.5e-6,
                                 **quiet)
    rows.append(("Deep SVDD epoch (one-class)", epoch_seconds(hist, warmup), n, step_phi * n_batches))
    phi = ae.encoder_copy(model)
    c, R, hist = svdd.train_svdd(phi, x, objective="soft-svdd", epochs=epochs, warmup=1, weight_decay=0.5e-6,
                                 **quiet)
    rows.append(("Deep SVDD epoch (soft-boundary)", epoch_seconds(hist, warmup), n,
                 step_phi * n_batches + fwd_phi * n / len(x_test)))
    rows.append(("Deep SVDD scoring the test set", timed(lambda: svdd.svdd_scores(phi, c, x_test, R), device,
                                                          reps, 1), len(x_test), fwd_phi))
    _, _, hist = ocnn.train_ocnn(ae.encoder_copy(model), x, epochs=epochs, **quiet)
    rows.append(("OC-NN epoch (z-only)", epoch_seconds(hist, warmup), n, float("nan")))
    _, _, hist = ocnn.train_ocnn(ae.encoder_copy(model), x, joint=True, epochs=epochs, **quiet)
    rows.append(("OC-NN epoch (joint)", epoch_seconds(hist, warmup), n,
                 step_phi * n_batches + fwd_phi * n / len(x_test)))
    cfg = settings.parse_config(["--dataset", dataset, "--pretrain", "geom"])   # run.py's defaults for this data
    t = cfg.geom_transforms                               # set: transformations, weight decay, batch size
    torch.manual_seed(0)
    net = geom.build_geom(dataset, t).to(device)
    hist = geom.train_geom(net, x, transforms=t, epochs=epochs, lr=cfg.geom_lr, weight_decay=cfg.geom_weight_decay,
                           milestones=[], batch_size=cfg.batch_size, verbose=False)
    rows.append((f"geom epoch ({t}, batch {cfg.batch_size})", epoch_seconds(hist, warmup), n, float("nan")))
    if cfg.geom_precise_bn:
        rows.append(("geom precise BN (one pass)", timed(lambda: geom.precise_bn(net, x, t, cfg.batch_size), device,
                                                        1, 0), n, float("nan")))
    x_few = x_test[:1000]                                 # its score runs the network K times an image
    rows.append((f"geom scoring ({len(geom.TRANSFORMS[t])} passes an image)",
                 timed(lambda: geom.geom_scores(net, x_few, t), device, 1, 0), len(x_few), float("nan")))
    return rows, cfg.geom_epochs, n + len(x_test)


def per_class(rows, geom_epochs, images, ae_epochs=10):
    """Seconds a class, from the rows: the autoencoder at the matrix's budget against transformation prediction
    at run.py's default, each with the scoring of the training and test images (the threshold and the AUROC)."""
    t = {name.split(" (")[0]: (seconds, n) for name, seconds, n, _ in rows}
    scoring = lambda name: images * t[name][0] / t[name][1]            # seconds to score the class's images
    ae_s = ae_epochs * t["AE training epoch"][0] + scoring("AE scoring the test set")
    geom_s = geom_epochs * t["geom epoch"][0] + t.get("geom precise BN", (0, 1))[0] + scoring("geom scoring")
    return (f"a class, training and scoring its {images} images: autoencoder {ae_epochs} epochs {ae_s:.0f} s, "
            f"transformation prediction {geom_epochs} epochs {geom_s:.0f} s ({geom_s / ae_s:.1f}x)")


def checkpoint_cost(dataset, device, reps):
    """Seconds and bytes of one checkpoint of the autoencoder stage (weights, Adam's moments, the schedule,
    the batch generator, a 150-epoch history), as run.py saves it at most every --checkpoint-seconds."""
    torch.manual_seed(0)
    model = ae.build_autoencoder(dataset).to(device)
    optimizer, scheduler = training.adam_with_milestones(model.parameters(), 1e-4, 1e-6, [50])
    model(torch.rand(2, *((1, 28, 28) if dataset == "mnist" else (3, 32, 32)), device=device)).sum().backward()
    optimizer.step()                                                  # Adam's moments exist from here on
    history = [{"epoch": e, "loss": 1.0, "lr": 1e-4, "seconds": 1.0} for e in range(1, 151)]
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = training.Checkpoint(os.path.join(folder, "checkpoint.pt"), seconds=0)
        state = dict(ae=model, optimizer=optimizer, scheduler=scheduler, generator=torch.Generator())
        seconds = timed(lambda: checkpoint.save(history, 150, **state), device, reps, 1)
        return seconds, os.path.getsize(checkpoint.path)


def widths(dataset, device, reps, warmup, batch_size, multipliers):
    """Transformation prediction with the four rotations at each --width: seconds per training epoch (one
    rotation an image), images scored per second (four forward passes an image), FLOP of one training epoch."""
    x = data.one_class_split(dataset, 0, root="data", device=device).x_train
    for w in multipliers:
        torch.manual_seed(0)
        net = geom.build_geom(dataset, "rot", width=w).to(device)
        hist = geom.train_geom(net, x, transforms="rot", epochs=warmup + reps, lr=1e-3, weight_decay=5e-4,
                               milestones=[], batch_size=batch_size, verbose=False)
        net.train()
        step = count_flops(lambda: torch.nn.functional.cross_entropy(net(x[:batch_size]), torch.zeros(
            batch_size, dtype=torch.long, device=device)).backward())
        score = timed(lambda: geom.geom_scores(net, x[:1000], "rot"), device, 1, 1)
        print(f"{dataset}, width {w}: {epoch_seconds(hist, warmup):.2f} s an epoch of {len(x)} images, "
              f"{1000 / score:.0f} images scored/s, {step * len(x) / batch_size / 1e9:.1f} GFLOP an epoch")


def pooling_ab(dataset, device, pairs, batch_size):
    """Training with fast_ops.MaxPool2 against F.max_pool2d: paired epochs, the order swapped every pair.

    Blocks of epochs timed one after the other drift with this machine's load; epochs alternated in one
    process and compared pair by pair do not. Prints the median of `pairs` ratios (the first pair, a
    warm-up, dropped); below 1 means fast_ops.MaxPool2 is faster. On other devices than the CPU both sides use
    F.max_pool2d (see fast_ops.max_pool2).
    """
    x = data.one_class_split(dataset, 0, root="data", device=device).x_train
    torch.manual_seed(0)
    model = ae.build_autoencoder(dataset).to(device)
    phi = ae.encoder_copy(model)
    quiet = dict(epochs=1, batch_size=batch_size, verbose=False)
    stages = {"AE training epoch": lambda: ae.train_autoencoder(model, x, weight_decay=0.5e-3, milestones=[50],
                                                                **quiet)[0]["seconds"],
              "Deep SVDD epoch (one-class)": lambda: svdd.train_svdd(phi, x, weight_decay=0.5e-6,
                                                                     **quiet)[2][0]["seconds"]}
    print(f"\n{dataset}, normal class 0: training pooling, fast_ops.MaxPool2 / F.max_pool2d, paired epochs")
    for name, epoch in stages.items():
        ratios = []
        for i in range(pairs + 1):
            seconds = {}
            for fast in ((True, False) if i % 2 == 0 else (False, True)):
                fast_ops.POOL = fast
                seconds[fast] = epoch()
            if i > 0:
                ratios.append(seconds[True] / seconds[False])
        fast_ops.POOL = True
        print(f"{name:34s} median ratio {statistics.median(ratios):.3f} over {pairs} pairs "
              f"(range {min(ratios):.3f}-{max(ratios):.3f})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--datasets", nargs="*", default=["mnist", "cifar10"])
    p.add_argument("--pool-ab", type=int, default=0, metavar="PAIRS",
                   help="also time training with fast_ops.MaxPool2 against F.max_pool2d in PAIRS paired epochs")
    p.add_argument("--widths", type=int, nargs="*", default=[],
                   help="time only transformation prediction (the rotations) at these --width multipliers")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    peak = matmul_flops_per_second(device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"float32 matmul (2048^2): {peak / 1e9:.1f} GFLOP/s")
    for dataset in args.datasets:
        try:
            if args.widths:
                widths(dataset, device, args.reps, args.warmup, args.batch_size, args.widths)
                continue
            rows, geom_epochs, class_images = bench(dataset, 0, device, args.reps, args.warmup, args.batch_size)
        except data.MissingData as e:
            print(f"\n{dataset}: skipped ({e})")
            continue
        print(f"\n{dataset}, normal class 0, batch {args.batch_size}, median of {args.reps} after "
              f"{args.warmup} warm-up:")
        print(f"{'stage':34s} {'seconds':>8s} {'images/s':>10s} {'GFLOP':>7s} {'of matmul peak':>15s}")
        for name, seconds, images, flop in rows:
            share = f"{100 * flop / seconds / peak:13.1f} %" if flop == flop else f"{'-':>15s}"
            print(f"{name:34s} {seconds:8.3f} {images / seconds:10.0f} {flop / 1e9:7.2f} {share}")
        print(per_class(rows, geom_epochs, class_images))
        seconds, size = checkpoint_cost(dataset, device, args.reps)
        print(f"checkpoint of the AE stage: {size / 2 ** 20:.2f} MiB in {1000 * seconds:.1f} ms, "
              f"{100 * seconds / rows[0][1]:.2f} % of an AE epoch if saved after every epoch")
        if args.pool_ab:
            pooling_ab(dataset, device, args.pool_ab, args.batch_size)


if __name__ == "__main__":
    main()
