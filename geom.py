"""Geometric-transformation prediction: the third representation, learnt by telling which transformation was applied.

Golan & El-Yaniv, "Deep Anomaly Detection Using Geometric Transformations", NeurIPS 2018, arXiv 1805.10917
(GEOM); Hendrycks, Mazeika, Kadavath, Song, "Using Self-Supervised Learning Can Improve Model Robustness and
Uncertainty", NeurIPS 2019, arXiv 1906.12340. A network sees images of the normal class only, each under one
of K fixed geometric transformations, and learns to name the transformation. To do so it must learn what an
upright normal image looks like; on an image of another kind it is unsure, and that is the anomaly score.

Equations implemented here

    transformations:  T_0 .. T_{K-1}, T_k(x) = rot90^r(shift_{dy,dx}(flip^f(x)))     (k <-> (f, dy, dx, r))
    prediction:       p(k | x) = softmax(W phi(x) + b)_k                             W: rep_dim -> K
    loss:             L = 1/(nK) sum_i sum_k -log p(k | T_k(x_i))                    (cross-entropy)
                      minimised here in expectation: each step draws one k_i per image,
                      L_B = 1/B sum_i -log p(k_i | T_{k_i}(x_i)), k_i uniform (all_copies: L itself)
    score:            s(x) = -sum_k log p(k | T_k(x))            higher = more anomalous
    precise BN:       each BatchNorm's (mu, sigma^2) = 1/m sum_j (mu_j, sigma_j^2) over the m batches of one
                      pass of the trained network (precise_bn), not the moving average of the last steps

  s(x) is the simplified normality score of GEOM's Sec. 4 (the log-likelihood of the right transformation
  summed over the K copies), negated to read higher = more anomalous; Hendrycks et al. score the same sum of
  cross-entropies. GEOM's full score fits a Dirichlet to each transformation's softmax outputs on the
  training set (left out); the simplified score left commented out in its code averages the probabilities
  p(k | T_k(x)), not their logs.

The transformation sets (TRANSFORMS), each T_k a tuple (f, dy, dx, r), in GEOM's order (itertools.product):

    "rot"        r in 0..3                                                     K = 4
    "rot-flip"   f in {no, yes} x r in 0..3         (GEOM's SimpleTransformer)  K = 8
    "geom"       f x dy in {0, -8, 8} x dx in {0, -8, 8} x r   (GEOM's Transformer)  K = 72

  f: horizontal flip (GEOM: np.fliplr), then the shift out[i, j] = x[i + dy, j + dx] with GEOM's border
  (Keras apply_affine_transform, fill_mode="reflect", i.e. scipy's half-sample reflection: the edge pixel is
  repeated, d c b a | a b c d | d c b a), then r quarter turns (np.rot90 = torch.rot90 on the (H, W) axes).
  GEOM's tx moves rows and ty columns, as here dy and dx. Exact tensor indexing, no interpolation.

Symbols

    paper      code                     shape
    x          x                        (B, C, H, W)        preprocessed images (data.py)
    T_k(x)     transform(x, k, name)    (B, C, H, W)        the k-th transformed copy
    K          len(TRANSFORMS[name])    int                 4, 8 or 72
    phi(x)     model.encoder(x)         (B, rep_dim)        the bias-free LeNet-type encoder of ae.py
    W, b       model.head               (K, rep_dim), (K,)  the transformation classifier
    p(k | x)   softmax(model(x))        (B, K)
    s(x)       geom_scores(model, x, name)  (N,)

Deviations from the papers
  * The network is ae.py's small bias-free LeNet-type encoder (ae.build_encoder) plus a linear head, not a
    WRN-10-4: the encoder's state dict loads into svdd.py's and ocnn.py's phi unchanged (ae.encoder_copy(model)
    reads model.encoder), and Deep SVDD's Prop. 2 holds for it with BatchNorm without a learned shift
    (bn_affine=False, run.py's default for this representation under either --settings); only the head has a
    bias.
  * One random transformation per image and step (labels drawn from the seeded generator). GEOM's code builds
    all n K (image, transformation) pairs, shuffles them and trains on batches of 128 pairs for ceil(200 / K)
    epochs, about 200 n image-passes whatever K is. Drawing one transformation per image gives the same kind
    of batch (mixed pairs, B image-passes a step) with an epoch of n image-passes for every K, so the sets
    are compared at equal compute epoch by epoch, and a budget below one pass over the n K pairs (72 n for
    "geom") still sees every image. `all_copies=True` (--geom-all-copies) puts all K copies of each image of
    the batch in one step (B K image-passes, the K labels balanced); results/geom_probe.py measures both at
    equal compute.
  * flip=True (--geom-flip, off by default) adds Hendrycks et al.'s augmentation to the set "rot": each
    training image flipped left-right at random before its rotation, not a label to predict.
  * MNIST (28 x 28) keeps GEOM's +-8 px shifts (a shift needs |d| <= H, W).
  * The images come preprocessed as for every stage here (data.py: Deep SVDD's global contrast normalisation
    and min-max scaling), so every objective reads the same inputs; GEOM's code scales the raw pixels to
    [-1, 1] (2 x / 255 - 1).
  * Adam with the milestone schedule of every stage here (training.adam_with_milestones), batches of 200
    (run.py's CIFAR-10 default here: 64, with weight decay 5e-4, measured better in results/README.md 9.2);
    GEOM: Keras' Adam (lr 1e-3, no schedule), batches of 128. The number of image-passes is the caller's.
  * The test images are scored with BatchNorm's running statistics (eval mode), as every model here; with
    precise_bn (--geom-precise-bn, on for CIFAR-10) those are recomputed for the final network once it is
    trained (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021, arXiv 2105.07576): under GEOM's constant
    lr the moving averages of the last steps are noisy and lag a network that still moves (results/README.md
    9.4).

File order: the transformations, the network, the loss, training (and precise BN), scoring.

Read next: results/geom_probe.py (the sets compared at equal compute), then svdd.py, which can start from
this encoder instead of the autoencoder's.
"""
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

import ae as ae_lib
import training

SHIFT = 8  # GEOM's translation in pixels (its Transformer(8, 8))

TRANSFORMS = {
    "rot": [(False, 0, 0, r) for r in range(4)],
    "rot-flip": [(f, 0, 0, r) for f, r in itertools.product((False, True), range(4))],
    "geom": list(itertools.product((False, True), (0, -SHIFT, SHIFT), (0, -SHIFT, SHIFT), range(4))),
}


# ---------------------------------------------------------------------------------------------------
# The transformations
# ---------------------------------------------------------------------------------------------------

def reflect_index(n, d):
    """Indices j + d for j in 0..n-1, reflected at the borders as scipy's 'reflect' (half-sample): (n,)."""
    idx = torch.arange(n) + d                                   # (n,) the source index, may leave 0..n-1
    idx = torch.where(idx < 0, -idx - 1, idx)                   # -1 -> 0, -2 -> 1: the edge pixel repeated
    return torch.where(idx >= n, 2 * n - 1 - idx, idx)          # n -> n-1, n+1 -> n-2


def shift(x, dy, dx):
    """out[..., i, j] = x[..., i + dy, j + dx], reflected at the border; |dy| <= H, |dx| <= W."""
    H, W = x.shape[-2:]
    if abs(dy) > H or abs(dx) > W:
        raise ValueError(f"a shift of ({dy}, {dx}) px needs images of at least that size, not {H} x {W}")
    rows = reflect_index(H, dy).to(x.device)                    # (H,)
    cols = reflect_index(W, dx).to(x.device)                    # (W,)
    return x.index_select(-2, rows).index_select(-1, cols)     # (B, C, H, W)


def transform(x, k, name):
    """T_k(x) of the set `name` for a batch (B, C, H, W): flip, then shift, then quarter turns (GEOM's order)."""
    f, dy, dx, r = TRANSFORMS[name][k]
    if f:
        x = torch.flip(x, dims=(-1,))                           # horizontal flip (np.fliplr)
    if dy or dx:
        x = shift(x, dy, dx)                                    # translation, reflected border
    return torch.rot90(x, r, dims=(-2, -1))                     # r quarter turns (np.rot90)


def predicts_flips(name):
    """Whether the set `name` has flipped transformations to tell apart (a random flip would blur its labels)."""
    return any(f for f, *_ in TRANSFORMS[name])


def transform_batch(x, name):
    """All K copies of a batch, copy-major: (K*B, C, H, W) images [T_0(x); ...; T_{K-1}(x)] and labels (K*B,)."""
    K = len(TRANSFORMS[name])
    images = torch.cat([transform(x, k, name) for k in range(K)])          # (K*B, C, H, W)
    labels = torch.arange(K, device=x.device).repeat_interleave(len(x))    # (K*B,) the k-th copy carries k
    return images, labels


def transform_each(x, labels, name):
    """T_{labels_i}(x_i) for every image i of the batch: (B, C, H, W); labels (B,) in 0..K-1."""
    out = torch.empty_like(x)
    for k in labels.unique().tolist():
        mask = labels == k                                      # (B,) the images that get T_k
        out[mask] = transform(x[mask], k, name)
    return out


def transform_random(x, name, generator):
    """Each image under one transformation drawn at random: T_{k_i}(x_i) (B, C, H, W) and the k_i (B,)."""
    labels = torch.randint(len(TRANSFORMS[name]), (len(x),), generator=generator).to(x.device)   # (B,) k_i
    return transform_each(x, labels, name), labels


# ---------------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------------

class GeomNet(nn.Module):
    """encoder phi (ae.py, bias-free) -> linear head W phi + b: the logits over the K transformations."""

    def __init__(self, encoder, n_transforms):
        super().__init__()
        self.encoder = encoder                                  # ae.MnistEncoder or ae.CifarEncoder
        self.head = nn.Linear(encoder.rep_dim, n_transforms)    # W, b: the bias is outside phi

    def forward(self, x):                                       # (B, C, H, W)
        return self.head(self.encoder(x))                       # (B, K) logits


def build_geom(dataset, transforms, rep_dim=None, bn_affine=False, width=1):
    """The geom network for `dataset` ('mnist' or 'cifar10') and the transformation set `transforms`."""
    if transforms not in TRANSFORMS:
        raise ValueError(f"unknown transformation set {transforms!r}: one of {sorted(TRANSFORMS)}")
    return GeomNet(ae_lib.build_encoder(dataset, rep_dim, bn_affine, width), len(TRANSFORMS[transforms]))


# ---------------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------------

def geom_loss(logits, labels):
    """L = 1/B sum_i -log softmax(W phi(T_{k_i}(x_i)))_{k_i}: the cross-entropy of the transformation's index."""
    return F.cross_entropy(logits, labels)


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------

def random_flip(x, generator):
    """Each image of the batch flipped left-right with probability 1/2 (the seeded generator's draw)."""
    flipped = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)      # (B,)
    return torch.where(flipped[:, None, None, None], torch.flip(x, dims=(-1,)), x)


def training_batch(xb, transforms, generator, all_copies=False, flip=False):
    """A batch as training shows it: each image flipped left-right at random with flip=True (an augmentation,
    not a label), then under one random T_k (or in all K copies). Returns images (B or K*B, C, H, W), labels."""
    xb = random_flip(xb, generator) if flip else xb                     # (B, C, H, W)
    return transform_batch(xb, transforms) if all_copies else transform_random(xb, transforms, generator)


def train_epoch(model, x, transforms, optimizer, generator, batch_size, all_copies=False, flip=False):
    """One pass over x in mini-batches made by training_batch; returns the mean loss."""
    model.train()
    total, count = 0.0, 0
    for idx in training.batches(len(x), batch_size, generator):
        images, labels = training_batch(x[idx.to(x.device)], transforms, generator, all_copies, flip)
        loss = geom_loss(model(images), labels)                             # logits: (B, K)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, count = total + loss.item() * len(labels), count + len(labels)
    return total / count


def train_geom(model, x, *, transforms, epochs, lr, weight_decay, milestones, batch_size=200, seed=0, verbose=True,
               stage="pretrain geom", checkpoint=None, all_copies=False, flip=False):
    """Train `model` to predict which transformation of the set `transforms` made each image of `x`.

    Returns the per-epoch history [{epoch, loss, lr, seconds}, ...], as ae.train_autoencoder. An epoch is one
    pass over the n images, each under one transformation drawn from the seeded generator (n image-passes;
    all_copies=True: all K copies of each, n K image-passes, GEOM's way). Adam with weight decay, the lr
    x0.1 after each milestone epoch. checkpoint: a training.Checkpoint to save at epoch ends and resume from.
    flip: each image flipped left-right at random first, an augmentation (Hendrycks et al.'s code); a set that
    predicts flips cannot take it.
    """
    if flip and predicts_flips(transforms):
        raise ValueError(f"flip: the set {transforms!r} predicts flips, so a random flip would blur its labels")
    model.to(x.device)

    def one_epoch(optimizer, generator):
        return train_epoch(model, x, transforms, optimizer, generator, batch_size, all_copies, flip)
    return training.train_loop(stage, model, epochs, one_epoch, lr=lr, weight_decay=weight_decay,
                               milestones=milestones, seed=seed, verbose=verbose, checkpoint=checkpoint)


@torch.no_grad()
def precise_bn(model, x, transforms, batch_size=200, seed=0, flip=False):
    """BatchNorm's running statistics recomputed for the trained network (precise BN): the plain average over
    one pass of x in training's batches, each image under one random transformation (after a random flip with
    flip=True, as training saw it), in place of the moving average (momentum 0.1) of the last steps' batches.
    That average is short (about 20 batches) and, under a constant lr, of networks a few steps old: the
    network that scores is normalised with statistics that are noisy and not its own."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                                               # None: the cumulative average
    model.train()
    generator = torch.Generator().manual_seed(seed)
    for idx in training.batches(len(x), batch_size, generator):
        model(training_batch(x[idx.to(x.device)], transforms, generator, flip=flip)[0])  # the statistics only
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


# ---------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------

@torch.no_grad()
def geom_scores(model, x, transforms, batch_size=500):
    """s(x) = -sum_k log softmax(W phi(T_k(x)))_k per image, (N,), eval mode; higher = more anomalous."""
    model.eval()
    K, out = len(TRANSFORMS[transforms]), []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]                                            # (b, C, H, W)
        s = torch.zeros(len(xb), device=x.device)                           # (b,)
        for k in range(K):
            log_p = F.log_softmax(model(transform(xb, k, transforms)), dim=1)   # (b, K)
            s -= log_p[:, k]                                                # -log p(k | T_k(x))
        out.append(s)
    return torch.cat(out)
