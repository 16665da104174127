"""The exercises of EXERCISES.md as a teacher hands them out: a student edition in one command, and checks.

    python exercises.py student DIR          # a copy of this project with every exercise's functions stubbed
    python exercises.py student DIR 1 3 4    # only those exercises stubbed
    python exercises.py check 3              # exercise 3's checks, one line each: pass, or FAIL with the hint
    python exercises.py list                 # each exercise: its functions, its equation, its checks

In the student edition each function an exercise names keeps its signature, docstring and equations, and its
body becomes `raise NotImplementedError("exercise N: ...")`; EXERCISES.md is the handout. This repository is
the teacher's edition. A check is a test of test_all.py; exercise N's checks use the reference code and the
functions of exercises 1..N only, so a student can do them in order (a test proves it on a student edition).
Checks test the idea, not the wording: the input validation a function needs stays outside the stubbed body.
"""
import ast
import dataclasses
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass(frozen=True)
class Exercise:
    title: str
    functions: tuple                    # "module.function" or "module.Class.method": stubbed in the student edition
    source: str                         # the paper and the equation the functions compute
    checks: tuple                       # the tests of test_all.py that check the exercise
    hint: str


EXERCISES = {
    1: Exercise("AUROC by hand", ("evaluate.rank_auroc",),
                "AUROC = P(s(anomaly) > s(normal)) + 1/2 P(tie), the Mann-Whitney U statistic (Hanley & McNeil, "
                "1982)",
                ("test_eval_auroc_matches_pairwise_definition_with_ties", "test_eval_auroc_hand_example",
                 "test_eval_auroc_perfect_separation_is_1", "test_eval_auroc_reversed_is_0",
                 "test_eval_auroc_all_tied_is_half"),
                "rank the scores; tied scores share their average rank; U = R_1 - n_1 (n_1 + 1) / 2"),
    2: Exercise("The reconstruction score", ("ae.reconstruction_error",),
                "the DCAE's score s(x) = ||x - x_hat||^2 (Masci et al., 2011; a baseline of Deep SVDD, Ruff et "
                "al., 2018)",
                ("test_ae_reconstruction_error_hand_values",
                 "test_ae_reconstruction_scores_are_per_sample_squared_error"),
                "one value per image: square the difference, sum over channels, rows and columns"),
    3: Exercise("Why c is fixed and pushed away from zero", ("svdd.init_center",),
                "Deep SVDD's centre rule and Prop. 1 (Ruff et al., 2018)",
                ("test_svdd_center_rule_hand_values", "test_exercise_collapse_trained_center"),
                "c = the mean code in eval mode; each |c_j| < eps becomes +-eps, keeping its sign (0 -> +eps)"),
    4: Exercise("Bias terms collapse the sphere", ("svdd.one_class_loss",),
                "the one-class objective, eq. (4) without weight decay, and Prop. 2 (Ruff et al., 2018)",
                ("test_svdd_one_class_loss_hand_value", "test_exercise_collapse_bias_in_last_layer",
                 "test_exercise_collapse_affine_batchnorm_shift"),
                "1/n sum_i ||phi(x_i) - c||^2, given the squared distances"),
    5: Exercise("The nu-property", ("svdd.soft_boundary_loss", "svdd.radius_from_quantile"),
                "the soft-boundary objective, eq. (3), and Prop. 4 (Ruff et al., 2018)",
                ("test_svdd_soft_boundary_loss_hand_value", "test_svdd_radius_satisfies_nu_property",
                 "test_svdd_soft_boundary_nu_property_after_training"),
                "R^2 + mean slack / nu; R = the k-th largest distance, k = ceil(nu n)"),
    6: Exercise("The soft threshold", ("rcae.soft_threshold",),
                "RCAE's N-step, the proximal operator of lambda ||N||_1 (Chalapathy, Menon & Chawla, 2017)",
                ("test_rcae_soft_threshold_hand_values", "test_rcae_huge_lambda_is_the_plain_autoencoder",
                 "test_rcae_zero_lambda_absorbs_the_whole_residual"),
                "S_t(b) = sign(b) max(|b| - t, 0), elementwise"),
    7: Exercise("OC-NN: its objective runs away, and its score is a hyperplane's",
                ("ocnn.ocnn_loss", "ocnn.update_r", "ocnn.ocnn_scores"),
                "OC-NN's objective, its r-step and its decision function s(x) = r - <w, g(V phi(x))> (Chalapathy, "
                "Menon & Chawla, 2018; r by the paper's theorem)",
                ("test_ocnn_loss_hand_values", "test_ocnn_r_is_the_nu_quantile",
                 "test_exercise_ocnn_linear_objective_is_unbounded",
                 "test_exercise_ocnn_joint_growing_codes_lowers_the_loss", "test_ocnn_score_sign",
                 "test_exercise_ocnn_linear_head_scores_by_the_direction_u"),
                "1/2 ||w||^2 + 1/2 ||V||_F^2 + mean hinge / nu - r; r = the k-th smallest output, k = ceil(nu N); "
                "s = r - y_hat"),
    8: Exercise("Unit codes bound OC-NN's objective", ("ocnn.unit_codes",),
                "the normalized codes z / ||z|| of the seed lab's joint OC-NN (on-anomaly-detection) under OC-NN's "
                "objective",
                ("test_ocnn_unit_codes_ignore_the_code_length", "test_exercise_ocnn_unit_codes_bound_the_loss"),
                "divide each row by its length, never by less than eps"),
    9: Exercise("One sphere, a fixed kernel or a learnt map", ("shallow.ocsvm_rho",),
                 "the OC-SVM's offset rho from the KKT conditions, (O3) (Schölkopf et al., 2001), and kernel SVDD "
                 "(Tax & Duin, 2004)",
                 ("test_ocsvm_kernel_svdd_view", "test_exercise_kernel_sphere_and_ocsvm_rank_alike_on_real_digits"),
                 "rho = (K a)_i on the margin support vectors, 0 < a_i < C; without one, the midpoint of the bounds"),
    10: Exercise("Why predicting a rotation finds anomalies", ("geom.geom_loss", "geom.geom_scores"),
                 "transformation prediction: the loss 1/(nK) sum -log p(k | T_k x) and the score "
                 "s(x) = -sum_k log p(k | T_k x) (Golan & El-Yaniv, 2018)",
                 ("test_exercise_geom_a_half_turn_symmetric_image_has_a_score_floor",
                  "test_geom_own_score_is_higher_for_another_digit"),
                 "cross-entropy of the logits against the labels; the score sums it over the K copies of each image"),
    11: Exercise("A kernel density, exactly and left out", ("shallow.log_kernel_mean", "shallow.kde_loo_log_density"),
                 "the Parzen window estimate (K1), log p(x) = log 1/n sum_i N(x; x_i, h^2 I) (Parzen, 1962), and its "
                 "leave-one-out form",
                 ("test_kde_of_one_training_point_is_the_gaussian_density", "test_kde_equals_the_brute_force_sum",
                  "test_kde_far_point_stays_finite", "test_shallow_kde_leave_one_out_equals_the_brute_force_sum",
                  "test_shallow_kde_threshold_from_train_scores_flags_the_level_of_unseen_points"),
                 "log-sum-exp of -d^2 / 2h^2, minus log n and d/2 log(2 pi h^2); leave x_i out of its own sum"),
    12: Exercise("One sphere, two modes", ("evaluate.auroc_per_class",),
                 "the AUROC of exercise 1 for each anomaly class alone, under Deep SVDD's protocol (Ruff et al., "
                 "2018) with a normal class made of several",
                 ("test_eval_auroc_per_class_hand_values", "test_exercise_one_sphere_pays_for_two_modes_on_pixels"),
                 "for each class k among the anomalies: the AUROC of the normal images and class k's images alone"),
}

SKIP = {".git", "runs", ".cache", "__pycache__", ".pytest_cache"}    # never part of an edition


class UserError(Exception):
    """A mistake in the command: one sentence, exit 2."""


def message(n, name):
    return f"exercise {n}: write {name} (EXERCISES.md, section {n})"


def stub(text, qualified, n):
    """The source `text` of module m with the body of function `qualified` ("m.f" or "m.Class.f") replaced by a
    raise that names exercise n; the decorators, the signature and the docstring stay."""
    name = qualified.split(".", 1)[1]
    node, body = ast.parse(text), None
    for part in name.split("."):
        found = [d for d in ast.iter_child_nodes(node if body is None else body)
                 if isinstance(d, (ast.FunctionDef, ast.ClassDef)) and d.name == part]
        if not found:
            raise UserError(f"no function {name} to stub")
        body = found[0]
    lines = text.splitlines(keepends=True)
    first = body.body[0]
    keep = first.end_lineno if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) else body.lineno
    if keep == body.lineno and not lines[keep - 1].rstrip().endswith(":"):
        raise UserError(f"{name}: the signature must end its line")
    raise_line = f"{' ' * first.col_offset}raise NotImplementedError({message(n, qualified)!r})\n"
    return "".join(lines[:keep] + [raise_line] + lines[body.end_lineno:])


def files():
    """The teacher's files, relative to HERE: git's tracked and not-ignored ones; without git, all but SKIP's."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=HERE,
                             capture_output=True, check=True).stdout
        return [p for p in out.decode().split("\0") if p and os.path.isfile(os.path.join(HERE, p))]
    except (OSError, subprocess.CalledProcessError):
        found = []
        for folder, subs, names in os.walk(HERE):
            subs[:] = [d for d in subs if d not in SKIP]
            found += [os.path.relpath(os.path.join(folder, n), HERE) for n in names if not n.endswith(".pyc")]
        return found


def student(dest, numbers=None):
    """Write the student edition to dest: the teacher's files, with the functions of `numbers` (default all)
    stubbed and EXERCISES.md cut to their sections. dest must not exist yet."""
    numbers = sorted(EXERCISES) if numbers is None else sorted(numbers)
    if os.path.exists(dest):
        raise UserError(f"{dest} exists already; name a new folder for the student edition")
    part = dest.rstrip(os.sep) + ".part"                              # built aside, renamed when whole
    shutil.rmtree(part, ignore_errors=True)
    for path in files():
        os.makedirs(os.path.join(part, os.path.dirname(path)), exist_ok=True)
        shutil.copy2(os.path.join(HERE, path), os.path.join(part, path))
    for n in numbers:
        for qualified in EXERCISES[n].functions:
            path = os.path.join(part, qualified.split(".")[0] + ".py")
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write(stub(text, qualified, n))
    with open(os.path.join(HERE, "EXERCISES.md")) as f:
        text = f.read()
    with open(os.path.join(part, "EXERCISES.md"), "w") as f:
        f.write(handout(text, numbers))
    os.replace(part, dest)
    return dest


def handout(text, numbers):
    """EXERCISES.md with its opening and the sections of `numbers` only."""
    parts = re.split(r"(?m)^(?=## \d+\. )", text)
    return "".join(parts[:1] + [p for p in parts[1:] if int(p[3:p.index(".")]) in numbers])


class _Recorder:
    """A pytest plugin that keeps each test's outcome and its first line of failure."""

    def __init__(self):
        self.results = []

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            why = report.longrepr.reprcrash.message.splitlines()[0] if report.failed and hasattr(
                report.longrepr, "reprcrash") else (report.longrepr[2] if report.skipped else "")
            self.results.append((report.nodeid.split("::")[-1], report.outcome, why))


def check(numbers):
    """Run the checks of the exercises `numbers` (test_all.py collected once); print one line per check and
    each exercise's verdict; True if every check passed."""
    import pytest
    recorder = _Recorder()
    ids = [f"{os.path.join(HERE, 'test_all.py')}::{name}" for n in numbers for name in EXERCISES[n].checks]
    code = pytest.main(["-p", "no:cacheprovider", "-p", "no:terminal", "-o", "addopts=", *ids], plugins=[recorder])
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        raise UserError(f"the checks could not run (pytest: {code.name}); is test_all.py here?")
    everything = True
    for n in numbers:
        ex = EXERCISES[n]
        results = [r for r in recorder.results if r[0].split("[")[0] in ex.checks]
        print(f"exercise {n}: {ex.title} ({', '.join(ex.functions)})")
        for name, outcome, why in results:
            why = f"not written yet (exercise {n})" if why.startswith(f"NotImplementedError: exercise {n}:") else why
            print(f"  {'pass' if outcome == 'passed' else outcome.upper():6} {name}" + (f": {why}" if why else ""))
        passed = bool(results) and all(o == "passed" for _, o, _ in results)
        print(f"  {'done' if passed else 'hint: ' + ex.hint}")
        everything &= passed
    return everything


def numbers_of(args):
    try:
        numbers = [int(a) for a in args]
    except ValueError:
        raise UserError(f"exercises are numbered 1-{len(EXERCISES)}, got {' '.join(args)}") from None
    if not numbers or any(n not in EXERCISES for n in numbers):
        raise UserError(f"exercises are numbered 1-{len(EXERCISES)}, got {' '.join(args) or 'none'}")
    return numbers


def main(args):
    what = args[0] if args else ""
    if what == "student" and len(args) >= 2:
        dest = student(args[1], numbers_of(args[2:]) if args[2:] else None)
        print(f"the student edition is in {dest}: EXERCISES.md is the handout, `python exercises.py check N` "
              f"the checks")
        return 0
    if what == "check":
        return 0 if check(numbers_of(args[1:])) else 1
    if what == "list":
        for n, ex in EXERCISES.items():
            print(f"{n}. {ex.title}: {', '.join(ex.functions)}\n   {ex.source}\n   checks: {', '.join(ex.checks)}")
        return 0
    raise UserError("usage: python exercises.py student DIR [N ...] | check N [N ...] | list")


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except UserError as e:
        print(f"exercises.py: {e}", file=sys.stderr)
        sys.exit(2)
