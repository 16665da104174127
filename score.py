"""Scores: the score function of a trained run (`scorer`, the one path from images to scores: run.py's for the
test and training images, this command's for new ones), and the command that scores new images with a run's
saved model, preprocessing constants and decision threshold.

    python score.py runs/<time>-mnist-0-ae+svdd my_digits/ --out scored.csv     # files or folders of images

Writes a CSV with one row per image: path, score (higher = more anomalous) and flagged (1 = the score is above
the run's threshold, the (1 - nu)- or (1 - flag_rate)-quantile of its training scores, or of its held-out
calibration images' with --calibration). The images go through the run's preprocessing with its two
training constants (data.preprocess), so a test image scored here gets the score of its row in the run's
scores.csv. Images of another size or channel count than the
run's are refused in one sentence; PNG and JPEG are read as the folder data set reads them (data.py).
Everything comes from the run folder's model.pt (the settings it was trained with included): the training
data need not be there, and nothing in the run folder is changed.
"""
import csv
import dataclasses
import os

import numpy as np
import torch

import ae
import data
import folders
import geom
import ocnn
import settings
import shallow
import svdd
from settings import UserError


def build_stage1(cfg, network):
    """The representation's network: the autoencoder (ae, rcae) or the transformation predictor (geom)."""
    if cfg.pretrain == "geom":
        return geom.build_geom(network, cfg.geom_transforms, cfg.rep_dim, cfg.bn_affine, cfg.width)
    return ae.build_autoencoder(network, cfg.rep_dim, cfg.bn_affine, cfg.width)


def shallow_input(model):
    """x -> what a shallow detector sees, on the CPU: the representation's codes, or (no model) the pixels."""
    return (lambda x: ae.encode(model.encoder, x).cpu()) if model is not None else (lambda x: x.flatten(1).cpu())


def scorer(cfg, state, network, device):
    """The score function s(x) (higher = more anomalous) of a trained run, from its state as model.pt holds it:
    the one path from images to scores, for the test set, the training set (the threshold) and score.py. Returns
    (score, view): what codes.png draws, codes(x) as the objective sees them (None on pixels), and Deep SVDD's
    centre c and R^2, or OC-NN's direction u = V^T w (linear g)."""
    view, model, o = {"codes": None}, None, cfg.objective
    if "stage1" in state and o in ("own", "kde", "ocsvm", "iforest"):
        model = build_stage1(cfg, network).to(device)
        model.load_state_dict(state["stage1"])
        view["codes"] = lambda x: ae.encode(model.encoder, x)
    if o == "own":                                                    # GEOM's score, or the reconstruction error
        return (lambda x: geom.geom_scores(model, x, cfg.geom_transforms) if cfg.pretrain == "geom"
                else ae.reconstruction_scores(model, x)), view
    if o in ("kde", "ocsvm", "iforest"):
        features = shallow_input(model)
        return (lambda x: shallow.score(o, state["detector"], features(x))), view
    phi = ae.build_encoder(network, cfg.rep_dim, cfg.bn_affine, cfg.width).to(device)
    phi.load_state_dict(state["phi"])
    view["codes"] = lambda x: ae.encode(phi, x)
    if o in ("svdd", "soft-svdd"):
        c, R = state["c"].to(device), state["R"]
        view.update(center=c, R2=R ** 2)
        return (lambda x: svdd.svdd_scores(phi, c, x, R)), view
    head = ocnn.OCNN(cfg.rep_dim, cfg.ocnn_hidden, cfg.ocnn_activation, cfg.ocnn_normalize).to(device)
    head.load_state_dict(state["head"])
    if cfg.ocnn_normalize:                                            # the head sees unit codes
        view["codes"] = lambda x: torch.nn.functional.normalize(ae.encode(phi, x), dim=1, eps=1e-8)
    if cfg.ocnn_activation == "linear":
        view["direction"] = (head.w.weight @ head.V.weight).squeeze(0).detach()   # (D,) u = V^T w
    return (lambda x: ocnn.ocnn_scores(phi, head, state["r"], x)), view


def image_paths(items):
    """The image files named, and those inside the folders named (walked, sorted)."""
    paths = []
    for item in items:
        if os.path.isdir(item):
            paths += sorted(os.path.join(d, n) for d, _, names in os.walk(item) for n in names
                            if n.lower().endswith(data.FOLDER_EXTENSIONS) and not n.startswith("."))
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UserError(f"{item} is neither an image file nor a folder.")
    return paths


def load_run(run_dir, device):
    """(Config, its normal class as shown, score function, threshold, preprocessing constants, expected (channels,
    [h, w])) of a finished run, from its model.pt alone (read, never moved aside)."""
    saved = folders.load_torch(os.path.join(run_dir, "model.pt"), "run model", "nothing is scored", set_aside=False)
    if saved is None or not os.path.exists(os.path.join(run_dir, "metrics.json")):
        raise UserError(f"{run_dir} is not a finished run folder (it needs a readable model.pt and metrics.json); "
                        f"give a folder that run.py or sweep.py finished.")
    try:
        fields = {f.name for f in dataclasses.fields(settings.Config)}
        cfg = settings.Config(**{k: v for k, v in saved["config"].items() if k in fields})
        s, _ = scorer(cfg, saved, saved["network"], device)
        channels = 1 if saved["network"] == "mnist" else 3
        normal = settings.class_tag(cfg.normal_class, saved["config"].get("normal_class_name"))
        return cfg, normal, s, float(saved["threshold"]), saved["scale"], (channels, list(saved["image_size"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:     # RuntimeError: a state of another shape
        raise UserError(f"{run_dir}/model.pt does not hold a run this version of the code can score "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); train it again with run.py.") from None


def main(argv=None):
    parser = settings.Parser(prog="score.py", description="Score new images with a trained run folder.")
    parser.add_argument("run_dir", help="a finished run folder (run.py or sweep.py wrote it)")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG) or folders of them")
    parser.add_argument("--out", default="scored.csv", help="the CSV to write (default: scored.csv)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)

    def body():
        if os.path.isdir(args.out):
            raise UserError(f"--out {args.out} is a folder; give the name of the CSV file to write.")
        device = settings.pick_device(args.device)
        cfg, normal, s, threshold, scale, (channels, size) = load_run(args.run_dir, device)
        paths = image_paths(args.images)
        try:
            images, got_channels, got_size = data.read_images(paths)
        except data.DataError as e:                                   # the user's images
            raise UserError(str(e)) from None
        kinds = {1: "greyscale", 3: "colour"}
        if (got_channels, list(got_size)) != (channels, size):
            raise UserError(f"{paths[0]} is a {got_size[0]}x{got_size[1]} {kinds[got_channels]} image, but the run "
                            f"was trained on {size[0]}x{size[1]} {kinds[channels]} images; give images of that kind.")
        scores = s(data.preprocess(images, cfg.scaling, scale).to(device)).cpu().numpy()
        if not np.isfinite(scores).all():
            raise UserError(f"{int((~np.isfinite(scores)).sum())} of the images got a NaN or infinite score; "
                            f"nothing is written (is each image a readable picture of the run's kind?)")

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["path", "score", "flagged"])
                w.writerows((p, f"{s:.9g}", int(s > threshold)) for p, s in zip(paths, scores))
        folders.write_whole(args.out, write)
        print(f"{len(paths)} images scored against {cfg.dataset} class {normal} ({settings.method_name(cfg)}), "
              f"{int((scores > threshold).sum())} flagged (threshold {threshold:.6g}) -> {args.out}")
        return scores
    return settings.cli(body)


if __name__ == "__main__":
    main()
