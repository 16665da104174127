"""One experiment, top to bottom: data -> stage 1 (the representation) -> stage 2 (the objective) -> scores ->
the decision -> the run folder -> plots.

    python run.py --settings port --ae-epochs 10 --svdd-epochs 10   # MNIST digit 0 in about half a minute
    python run.py --objective svdd                                  # the paper's settings: 150 + 150 epochs
    python run.py --objective ocnn-joint --pretrain rcae --pollution-rate 0.05

settings.py says what a run is (every flag, the methods and their names); folders.py where it is saved and
how an interrupted run resumes; score.py turns a trained state into its score function; sweep.py runs many.
From here to any loss is one file: ae.py, rcae.py, geom.py, svdd.py, ocnn.py or shallow.py.
"""
import dataclasses
import json
import math
import os

import numpy as np
import torch

import ae
import data
import evaluate
import folders
import geom
import ocnn
import rcae
import score
import settings
import shallow
import svdd
import training
from settings import UserError


def main(argv=None):
    """Parse the flags into a Config, then run one experiment (or continue an unfinished one). Returns its metrics."""
    def body():
        cfg = settings.parse_config(argv)
        print("config:", json.dumps(dataclasses.asdict(cfg)))
        settings.check_folders(cfg)
        device = settings.pick_device(cfg.device)
        data_id = folders.data_identity(cfg.dataset, cfg.data_root)
        name = settings.run_name(cfg)
        later = settings.later_defaults()                             # unset, they are not in the key: match them
        run_dir = folders.unfinished_run(cfg.out, name, {**settings.used_settings(cfg), **data_id,
                                                         **{k: getattr(cfg, k) for k in later}}, later)
        if run_dir is not None:
            print(f"continuing the unfinished run {run_dir}")
        return run_experiment(cfg, run_dir or folders.new_run_folder(cfg.out, name), device, data_id)
    return settings.cli(body)


def run_experiment(cfg, run_dir, device, data_id):
    """One experiment (one class, one seed) into run_dir, locked (folders.Busy if another process trains there).
    Returns the metrics, written last to metrics.json; a run another process finished meanwhile is read back."""
    with folders.Lock(os.path.join(run_dir, ".lock")):
        done = folders.finished_metrics(run_dir)
        if done is not None:
            print(f"{run_dir}: finished by another process; its metrics are read back")
            return done
        clock = folders.Clock(os.path.join(run_dir, "seconds.json"))  # > 0 s before: an interrupted run resumes
        training.seed_all(cfg.seed)
        d, facts = load_data(cfg, device)
        folders.write_json(os.path.join(run_dir, "config.json"), {**dataclasses.asdict(cfg), **data_id, **facts})
        model, stage1_history, extra = stage1(cfg, d, facts["network"], device, data_id, clock) \
            if settings.has_stage1(cfg) else (None, [], {})
        checkpoint = training.Checkpoint(os.path.join(run_dir, "checkpoint.pt"), cfg.checkpoint_seconds, clock)
        history, state, info = stage2(cfg, d, model, checkpoint)
        state = {"stage1": model.state_dict(), **state} if model is not None else state
        s, view = score.scorer(cfg, state, facts["network"], device)

        # The scores (higher = more anomalous) and the decision: flagged = s > the (1 - level)-quantile of the
        # held-out calibration images' scores (--calibration), or else of the training images' own, taken out
        # of sample where a method scores its own training points optimistically (a shallow detector's).
        labels, scores = d.y_test.cpu().numpy(), checked(s(d.x_test), cfg)
        scored = np.asarray(info.pop("eval_index", np.arange(len(labels))))  # all but a gamma holdout
        train_scores = info.pop("train_scores", None)
        where = "calibration" if len(d.x_cal) else "train"
        ref = s(d.x_cal) if len(d.x_cal) else s(d.x_train) if train_scores is None else train_scores
        ref = checked(ref, cfg)
        level = settings.decision_level(cfg)
        threshold = evaluate.quantile_threshold(ref, level)
        normal = scored[labels[scored] == 0]                          # the normal test images scored

        stages = {f"stage 1 ({cfg.pretrain})": stage1_history} if model is not None else {}
        stages[cfg.objective] = history
        folders.write_json(os.path.join(run_dir, "history.json"), stages)
        folders.write_scores(os.path.join(run_dir, "scores.csv"), labels, scores, threshold)
        if d.polluted.any() or d.cal_polluted.any():
            folders.write_json(os.path.join(run_dir, "pollution.json"),
                               {"polluted_train_indices": d.train_index[d.polluted].tolist(),
                                "polluted_calibration_indices": d.cal_index[d.cal_polluted].tolist()})
        folders.save_torch({"config": dataclasses.asdict(cfg), **facts, "threshold": threshold,
                            "scale": list(d.scale), **state}, os.path.join(run_dir, "model.pt"))
        title = settings.run_title(cfg, facts["normal_class_name"])
        codes = view.pop("codes")                                     # what the objective sees of an image
        evaluate.plot_run(os.path.join(run_dir, "plots"), title, stages, d.x_test.cpu().numpy(), labels, scores,
                          threshold, None if codes is None else codes(d.x_test).cpu().numpy(),
                          **{k: v.cpu().numpy() if torch.is_tensor(v) else v for k, v in view.items()})
        metrics = evaluate.summarize(labels[scored], scores[scored])
        metrics.update(evaluate.decision(labels[scored], scores[scored], threshold), threshold=threshold,
                       threshold_level=level, **{f"{where}_flagged": float((ref > threshold).mean())},
                       normal_test_flagged=float((scores[normal] > threshold).mean()))
        metrics.update(extra, **info, normal_class=cfg.normal_class, normal_class_name=facts["normal_class_name"],
                       seed=cfg.seed, n_train=len(d.x_train), n_test_scored=len(scored), scale=list(d.scale),
                       device=str(device), seconds=round(clock.total(), 2),
                       seconds_before_resume=round(clock.before, 2))
        folders.write_json(os.path.join(run_dir, "metrics.json"), metrics)  # last: marks the run finished
        checkpoint.remove()
        clock.remove()                                                # the seconds are in metrics.json now
    m = {k: 100 * v for k, v in metrics.items() if isinstance(v, float)}
    held = f"{m['calibration_flagged']:.1f}% of the {len(d.x_cal)} held-out calibration images" \
        if "calibration_flagged" in m else f"{m['train_flagged']:.1f}% of the training images"
    print(f"\nAUROC {m['auroc']:.2f}  AP {m['average_precision']:.2f}  at the threshold: precision {m['precision']:.1f}"
          f" recall {m['recall']:.1f} F1 {m['f1']:.1f}\nflagged: {held}, {m['normal_test_flagged']:.1f}% of the "
          f"normal test images ({title}, seed {cfg.seed}, {metrics['seconds']:.0f}s) -> {run_dir}")
    if "train_flagged" in m and optimistic(metrics["normal_test_flagged"], level, len(normal)):
        print(f"warning: the threshold flags {m['normal_test_flagged']:.1f}% of the unseen normal images, not the "
              f"{100 * level:g}% it was set to: the model scores its training images lower than new ones; "
              f"--calibration 0.1 sets it on held-out images")
    return metrics


def load_data(cfg, device):
    """The one-class split of data.py, and the facts a run folder keeps of it: which network reads it, the
    class's name (a folder's), and for a folder what reading it did (so that score.py needs no data)."""
    try:
        d = data.one_class_split(cfg.dataset, cfg.normal_class, cfg.pollution_rate, cfg.seed, cfg.data_root,
                                 device, cfg.scaling, cfg.calibration)
    except (ValueError, data.DataError) as e:                         # a setting or a data set that cannot work
        raise UserError(str(e)) from None
    level = settings.decision_level(cfg)
    if 0 < len(d.x_cal) < 1 / level:                                  # the quantile would be their largest score
        raise UserError(f"--calibration {cfg.calibration} holds out {len(d.x_cal)} images, too few for a threshold "
                        f"at {level:g}: at least {math.ceil(1 / level - 1e-9)} are needed; hold out a larger share.")
    facts = {"network": settings.network(cfg), "normal_class_name": settings.class_name(cfg)}
    folder = data.folder_facts(cfg.data_root) if cfg.dataset == "folder" else {}
    facts["image_size"] = folder.get("resized_from") or list(d.x_train.shape[2:])  # what score.py accepts
    if folder.get("resized_from"):
        print(f"resized every image from {folder['resized_from']} to {folder['size']} "
              f"({folder['interpolation']} interpolation)")
    return d, dict(facts, folder=folder) if folder else facts


def stage1(cfg, d, network, device, data_id, clock):
    """Stage 1: the representation, from the cache when the same data, settings and seed came before
    (folders.cached). Returns (model, history, extra); extra holds RCAE's per-image ||N_i||_1."""
    training.seed_all(cfg.seed)                                       # weight init depends on the seed only
    model = score.build_stage1(cfg, network).to(device)
    training.banner(f"stage 1: {settings.REPRESENTATIONS[cfg.pretrain].prose} on {len(d.x_train)} images")
    if cfg.batch_size > len(d.x_train):
        print(f"warning: --batch-size {cfg.batch_size} is above the {len(d.x_train)} training images: each "
              f"epoch is one step on all of them")

    def train(partial):                                               # partial: the checkpoint's path
        kw = dict(batch_size=cfg.batch_size, seed=cfg.seed, verbose=not cfg.quiet,
                  checkpoint=training.Checkpoint(partial, cfg.checkpoint_seconds, clock))
        if cfg.pretrain == "geom":
            return {"history": geom.train_geom(model, d.x_train, transforms=cfg.geom_transforms, epochs=cfg.geom_epochs,
                                               lr=cfg.geom_lr, weight_decay=cfg.geom_weight_decay,
                                               milestones=cfg.geom_milestones, flip=cfg.geom_flip,
                                               all_copies=cfg.geom_all_copies, **kw), "extra": {}}
        ae.initialize(model, cfg.ae_init, d.x_train, cfg.seed)        # before any training, RCAE's too
        kw.update(lr=cfg.ae_lr, weight_decay=cfg.ae_weight_decay, milestones=cfg.ae_milestones)
        if cfg.pretrain == "ae":
            return {"history": ae.train_autoencoder(model, d.x_train, epochs=cfg.ae_epochs, **kw), "extra": {}}
        _, N, history = rcae.train_rcae(model, d.x_train, lam=cfg.rcae_lambda, outer_iters=cfg.rcae_iters,
                                        epochs_per_iter=cfg.ae_epochs // cfg.rcae_iters, **kw)
        mass = rcae.n_mass_per_image(N).cpu()                         # (n,) ||N_i||_1
        extra = {"N_l1_per_image_normal": mass[~d.polluted.cpu()].mean().item()}
        if d.polluted.any():
            extra["N_l1_per_image_polluted"] = mass[d.polluted.cpu()].mean().item()
        return {"history": history, "extra": extra}
    path = folders.cache_path(cfg.out, cfg.dataset, cfg.pretrain, settings.class_tag(cfg.normal_class, None),
                              settings.used_settings(cfg, stage1_only=True), data_id)
    saved = folders.cached(path, model, train)
    if cfg.pretrain == "geom" and cfg.geom_precise_bn:                # the cache holds the network as trained
        geom.precise_bn(model, d.x_train, cfg.geom_transforms, cfg.batch_size, cfg.seed, cfg.geom_flip)
    return model, saved["history"], saved["extra"]


def stage2(cfg, d, model, checkpoint):
    """Stage 2: the objective on the representation's encoder, or a shallow detector on pixels or codes. Returns
    (history, state, info): state scores an image (model.pt saves it, `scorer` reads it), info the shallow
    detectors' choices and their out-of-sample training scores."""
    training.seed_all(cfg.seed)                                       # same start with or without the cache
    kw = dict(batch_size=cfg.batch_size, seed=cfg.seed, verbose=not cfg.quiet, checkpoint=checkpoint)
    o, prose = cfg.objective, settings.OBJECTIVES[cfg.objective].prose
    if o == "own":
        training.banner("stage 2: none (the score is the representation's own)")
        return [], {}, {}
    if o in ("kde", "ocsvm", "iforest"):
        training.banner(f"stage 2: {prose} on the {cfg.features} of {len(d.x_train)} training images")
        features = score.shallow_input(model)
        x_train = features(d.x_train)                                 # the codes (or pixels) it is fitted on
        test = (features(d.x_test), d.y_test.cpu().numpy()) if cfg.ocsvm_gamma == "test-auroc" else (None, None)
        detector, info = shallow.fit(o, x_train, pca=cfg.pca, nu=cfg.nu, bandwidth=cfg.kde_bandwidth,
                                     gamma=cfg.ocsvm_gamma, trees=cfg.iforest_trees, psi=cfg.iforest_samples,
                                     seed=cfg.seed, x_test=test[0], y_test=test[1])
        if not len(d.x_cal):                                          # else the held-out images set the threshold
            info["train_scores"] = shallow.train_scores(o, detector, x_train).cpu().numpy()
        return [], {"detector": detector}, info
    phi = ae.encoder_copy(model)                                      # the representation itself stays untouched
    training.banner(f"stage 2: {prose}" + (f" (nu={cfg.nu})" if settings.uses_nu(cfg) else ""))
    if o in ("svdd", "soft-svdd"):
        c, R, history = svdd.train_svdd(phi, d.x_train, objective=o, nu=cfg.nu, epochs=cfg.svdd_epochs,
                                        lr=cfg.svdd_lr, weight_decay=cfg.svdd_weight_decay,
                                        milestones=cfg.svdd_milestones, warmup=cfg.svdd_warmup, **kw)
        return history, {"phi": phi.state_dict(), "c": c, "R": R}, {}
    head, r, history = ocnn.train_ocnn(
        phi, d.x_train, joint=o == "ocnn-joint", nu=cfg.nu, epochs=cfg.ocnn_epochs, lr=cfg.ocnn_lr,
        lr_drop_epoch=cfg.ocnn_lr_drop, encoder_lr=cfg.encoder_lr, encoder_weight_decay=cfg.encoder_weight_decay,
        encoder_lr_drop=cfg.encoder_lr_drop, hidden=cfg.ocnn_hidden, activation=cfg.ocnn_activation,
        normalize=cfg.ocnn_normalize, clip=cfg.ocnn_clip, **kw)
    return history, {"phi": phi.state_dict(), "head": head.state_dict(), "r": r}, {}


def optimistic(flagged, level, n):
    """Whether a threshold set at `level` on the training images flags more of n unseen normal images than
    chance allows: four binomial standard deviations above the level."""
    return n > 0 and flagged > level + 4 * np.sqrt(level * (1 - level) / n)


def checked(scores, cfg):
    """Scores as a NumPy array; NaN or infinite ones stop the run before anything is written as finished."""
    scores = np.asarray(scores.cpu().numpy() if torch.is_tensor(scores) else scores)
    if not np.isfinite(scores).all():
        raise training.Diverged(f"{settings.method_name(cfg)}: {int((~np.isfinite(scores)).sum())} scores are "
                                     f"NaN or infinite, so the run is not finished; check the settings")
    return scores


if __name__ == "__main__":
    main()
