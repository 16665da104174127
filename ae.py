"""Convolutional autoencoder pretraining (DCAE): the first stage of every pipeline.

Ruff et al., "Deep One-Class Classification", ICML 2018 (Deep SVDD), Sec. 4.1 and the LeNet-type
networks of its reference code. The encoder of this autoencoder becomes the feature map phi of Deep SVDD
(svdd.py) and of OC-NN (ocnn.py); its reconstruction error is also the DCAE baseline score.

Equations implemented here

    reconstruction loss (per batch):  L = 1/B sum_i ||x_i - x_hat_i||^2          (sum over C, H, W)
    anomaly score (DCAE baseline):    s(x) = ||x - x_hat||^2        higher = more anomalous

Symbols

    paper             code          shape
    x                 x             (B, C, H, W)   preprocessed images (data.py)
    phi(x; W) = z     encoder(x)    (B, rep_dim)   the code; Deep SVDD's output space
    x_hat             ae(x)         (B, C, H, W)   reconstruction in (0, 1) (sigmoid)

The networks, exactly as the reference code (Deep-SVDD-PyTorch, networks/mnist_LeNet.py, cifar10_LeNet.py):
  * no bias anywhere: Deep SVDD Prop. 2 (a bias lets phi map every input to c, "hypersphere collapse");
  * BatchNorm with eps=1e-4 and affine=False (an affine BN would add a bias), running statistics kept;
  * leaky ReLU with slope 0.01 (the paper's text says 0.1; both reference code bases use 0.01);
  * 2x2 max pooling in the encoder, nearest-neighbour x2 upsampling in the decoder.

The encoder is a module of its own (`MnistEncoder`, `CifarEncoder`) so that its state dict, BatchNorm
running statistics included, loads unchanged into the stand-alone phi that Deep SVDD trains.

Deviations from the reference code
  * The CIFAR-10 autoencoder's BatchNorm1d on the code lives in the autoencoder, not in the encoder:
    the Deep SVDD network has none, so the encoder's state dict loads into phi with no key to drop.
  * Batches are index slices of a seeded permutation of an in-memory tensor (no DataLoader).

Read next: rcae.py (the robust variant), then svdd.py or ocnn.py.
"""
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import data

LRELU_SLOPE = 0.01  # both reference code bases; the paper text says 0.1
BN_EPS = 1e-4


def bn2d(channels, affine=False):
    """BatchNorm without affine parameters: no learned shift, hence no bias (Deep SVDD Prop. 2).

    affine=True adds a learned scale and shift per channel, as the paper's Theano code does (Lasagne's
    BatchNormLayer); the shift acts as a bias before the leaky ReLU. The PyTorch port has none.
    """
    return nn.BatchNorm2d(channels, eps=BN_EPS, affine=affine)


def lrelu(x):
    return F.leaky_relu(x, LRELU_SLOPE)


def up2(x):
    """Nearest-neighbour upsampling by 2 in H and W: (B, C, H, W) -> (B, C, 2H, 2W)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


FAST_POOL = True  # False: F.max_pool2d everywhere (bench.py compares the two)


def window_corners(x):
    """The four corners of every 2x2 window, as strided views: top-left, top-right, bottom-left, bottom-right."""
    return x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]


def is_greater(u, v):
    """1.0 where u > v, else 0.0, in float arithmetic (CPU comparisons that output bool are slower)."""
    return torch.sign(torch.relu(u - v))


class MaxPool2(torch.autograd.Function):
    """F.max_pool2d(x, 2) for even H and W, forward and backward, without argmax indices.

    Forward: the maximum of the four corners of each window, as in `max_pool2`. Backward: each window's
    gradient goes to its first maximum in row-major order (top-left, top-right, bottom-left,
    bottom-right), exactly where F.max_pool2d's saved indices send it, ties included (finite x). The
    forward keeps three 0/1 masks (float, see is_greater) of a quarter of x's size: the maximum is in the
    bottom row, the right one of the top pair is greater, the right one of the bottom pair is greater.
    Why: the CPU F.max_pool2d kernel is slow for NCHW tensors (about 4.5 ms forward for MNIST's first
    layer, 200 x 8 x 28 x 28); forward and backward here take 3.1 ms against its 5.4-5.8 ms. A test checks
    values and gradients equal F.max_pool2d's, ties included.
    """

    @staticmethod
    def forward(ctx, x):
        a, b, c, d = window_corners(x)
        top, bottom = torch.maximum(a, b), torch.maximum(c, d)
        ctx.save_for_backward(is_greater(bottom, top), is_greater(b, a), is_greater(d, c))
        ctx.shape = x.shape
        return torch.maximum(top, bottom)

    @staticmethod
    def backward(ctx, g):
        in_bottom, right_top, right_bottom = ctx.saved_tensors
        g_bottom = g * in_bottom                                 # the window's gradient if its max is below
        g_top = g - g_bottom                                     # else here (g - g = 0 exactly)
        grad = g.new_empty(ctx.shape)                            # every element is written below
        a, b, c, d = window_corners(grad)
        torch.mul(g_top, right_top, out=b)
        torch.sub(g_top, b, out=a)
        torch.mul(g_bottom, right_bottom, out=d)
        torch.sub(g_bottom, d, out=c)
        return grad


def max_pool2(x):
    """F.max_pool2d(x, 2): the maximum of each 2x2 window, stride 2 (odd H or W: the last row/column dropped).

    The same numbers exactly (a maximum has no rounding). Why: on the CPU, F.max_pool2d also computes the
    argmax indices its backward pass needs, even under no_grad, and that dominates scoring (40 % of the DCAE
    score time on MNIST). Without autograd, the maximum of the four strided views x[0::2, 0::2],
    x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2] is several times faster. With autograd on the CPU,
    `MaxPool2` computes the same maximum and sends the gradient where F.max_pool2d would (odd sizes and
    other devices, whose F.max_pool2d kernels are not the slow one: F.max_pool2d itself).
    """
    if not FAST_POOL:
        return F.max_pool2d(x, 2)
    if torch.is_grad_enabled() and x.requires_grad:
        even = x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0
        return MaxPool2.apply(x) if even and x.device.type == "cpu" else F.max_pool2d(x, 2)
    H, W = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    a, b, c, d = window_corners(x[..., :H, :W])
    return torch.maximum(torch.maximum(a, b), torch.maximum(c, d))


# Phase matrices of `up2_deconv`: row d of PHASE[a] sums the 5 kernel taps that, for output rows
# 2i + a, read input row i + d - 1 of the (not upsampled) image (d = 0, 1, 2).
PHASE = torch.tensor([[[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]],     # a = 0 (even rows)
                      [[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 1, 1]]],    # a = 1 (odd rows)
                     dtype=torch.float32)
FUSED_UPSAMPLE = True  # False: the plain deconv(up2(x)), as the reference code computes it


def up2_deconv(deconv, x):
    """deconv(up2(x)) for a 5x5, stride-1, bias-free ConvTranspose2d with padding 2 or 3, computed faster.

    Equivalent to `deconv(up2(x))` (the same numbers up to float rounding; a test checks values and
    gradients). Why: a stride-1 transposed convolution is a convolution with the kernel flipped and its
    in/out channels swapped (padding k-1-p = 2 for p = 2). On a nearest-upsampled image, output pixel
    (2i+a, 2j+b) reads only 3x3 distinct pixels of x around (i, j), so the 5x5 kernel collapses, for each
    of the four phases (a, b), to a 3x3 kernel: the sum of the taps that land on the same pixel of x.
    One conv2d with 4 * C_out channels on x computes all phases; pixel_shuffle interleaves them into
    (2H, 2W). That is 9/25 of the multiply-adds and no upsampled copy in memory. Padding 3 (MNIST's
    deconv2, 16 -> 14) is padding 2's output with one pixel cropped on each side.
    """
    p = deconv.padding[0]
    if not FUSED_UPSAMPLE or deconv.kernel_size != (5, 5) or p not in (2, 3):
        return deconv(up2(x))
    K = deconv.weight.transpose(0, 1).flip(2, 3)                              # (C_out, C_in, 5, 5) as conv
    P = PHASE.to(K)
    K4 = torch.einsum("adu,oiuv,bev->oabide", P, K, P)                        # (C_out, 2, 2, C_in, 3, 3)
    y = F.conv2d(x, K4.reshape(-1, K.shape[1], 3, 3), padding=1)              # (B, 4 C_out, H, W)
    y = F.pixel_shuffle(y, 2)                                                 # (B, C_out, 2H, 2W)
    return y if p == 2 else y[:, :, 1:-1, 1:-1]                               # padding 3: crop to 2H - 2


# ---------------------------------------------------------------------------------------------------
# Optional initialisation of the first convolution: a dictionary learned on image patches
# ---------------------------------------------------------------------------------------------------

def image_patches(x, size, n_images=500, seed=0):
    """Every size x size patch of n_images random images of x, one row each, every pixel position (column)
    standardised to mean 0 and std 1 over the patches: (n_images * L, C * size * size)."""
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n_images]
    P = F.unfold(x[idx].float().cpu(), size)                              # (n, C size^2, L)
    P = P.transpose(1, 2).reshape(-1, P.shape[1])
    return (P - P.mean(0)) / P.std(0).clamp_min(1e-8)


def sparse_code(P, D, alpha, steps=100):
    """argmin_A 1/2 ||P - A D||^2 + alpha ||A||_1 (the lasso, one row of A per patch) by ISTA:
    A <- soft_threshold(A - (A D - P) D^T / L, alpha / L), L the largest eigenvalue of D D^T."""
    L = torch.linalg.eigvalsh(D @ D.T).max()
    A = torch.zeros(len(P), len(D))
    for _ in range(steps):
        A = A - (A @ D - P) @ D.T / L
        A = A.sign() * (A.abs() - alpha / L).clamp_min(0)
    return A


def dictionary_filters(x, n_filters, size, *, alpha=1.0, iters=30, n_patches=20000, seed=0):
    """First-layer filters: the atoms of a sparse dictionary of the images' patches, (n_filters, C, size, size).

    The Theano Deep SVDD code's `--weight_dict_init 1` (its mnist_cae.sh / mnist_svdd.sh; the PyTorch port
    and this project's default use PyTorch's random init instead): patches of 500 random training images,
    each pixel position standardised, then min_{D, A} 1/2 ||P - A D||^2 + alpha ||A||_1 with unit-norm atoms
    (rows of D). There: scikit-learn's MiniBatchDictionaryLearning (1000 mini-batches of 10 patches); here:
    full-batch alternation on n_patches random patches, `sparse_code` for A, then least squares for D and
    each atom rescaled to norm 1 (an atom no patch uses restarts as a random patch).
    """
    g = torch.Generator().manual_seed(seed)
    P = image_patches(x, size, seed=seed)
    P = P[torch.randperm(len(P), generator=g)[:n_patches]]                # (n, d)
    D = F.normalize(P[torch.randperm(len(P), generator=g)[:n_filters]], dim=1)
    for _ in range(iters):
        A = sparse_code(P, D, alpha)                                      # (n, n_filters)
        D = torch.linalg.solve(A.T @ A + 1e-6 * torch.eye(n_filters), A.T @ P)
        unused = A.abs().sum(0) == 0
        D[unused] = P[torch.randint(len(P), (int(unused.sum()),), generator=g)]
        D = F.normalize(D, dim=1)
    return D.reshape(n_filters, x.shape[1], size, size)


# ---------------------------------------------------------------------------------------------------
# MNIST: 1x28x28 -> 32
# ---------------------------------------------------------------------------------------------------

class MnistEncoder(nn.Module):
    """phi for MNIST: conv(1->8,5x5) BN lrelu pool -> conv(8->4,5x5) BN lrelu pool -> linear(196->32)."""

    def __init__(self, rep_dim=32, bn_affine=False):
        super().__init__()
        self.rep_dim, self.bn_affine = rep_dim, bn_affine
        self.conv1 = nn.Conv2d(1, 8, 5, padding=2, bias=False)
        self.bn1 = bn2d(8, bn_affine)
        self.conv2 = nn.Conv2d(8, 4, 5, padding=2, bias=False)
        self.bn2 = bn2d(4, bn_affine)
        self.fc = nn.Linear(4 * 7 * 7, rep_dim, bias=False)

    def forward(self, x):                                       # (B, 1, 28, 28)
        x = max_pool2(lrelu(self.bn1(self.conv1(x))))           # (B, 8, 14, 14)
        x = max_pool2(lrelu(self.bn2(self.conv2(x))))           # (B, 4, 7, 7)
        return self.fc(x.flatten(1))                            # (B, rep_dim) = z


class MnistDecoder(nn.Module):
    """The mirror: z as (2,4,4) -> up -> deconv(2->4) -> up -> deconv(4->8) -> up -> deconv(8->1) -> sigmoid."""

    def __init__(self, rep_dim=32, bn_affine=False):
        super().__init__()
        assert rep_dim % 16 == 0, "the decoder views z as (rep_dim/16, 4, 4)"
        self.deconv1 = nn.ConvTranspose2d(rep_dim // 16, 4, 5, padding=2, bias=False)
        self.bn1 = bn2d(4, bn_affine)
        self.deconv2 = nn.ConvTranspose2d(4, 8, 5, padding=3, bias=False)
        self.bn2 = bn2d(8, bn_affine)
        self.deconv3 = nn.ConvTranspose2d(8, 1, 5, padding=2, bias=False)

    def forward(self, z):                                       # (B, rep_dim)
        x = z.view(z.shape[0], -1, 4, 4)                        # (B, 2, 4, 4)
        x = up2_deconv(self.deconv1, lrelu(x))                  # (B, 4, 8, 8)    deconv1(up2(.))
        x = up2_deconv(self.deconv2, lrelu(self.bn1(x)))        # (B, 8, 14, 14): padding 3 trims 16 -> 14
        x = up2_deconv(self.deconv3, lrelu(self.bn2(x)))        # (B, 1, 28, 28)
        return torch.sigmoid(x)


# ---------------------------------------------------------------------------------------------------
# CIFAR-10: 3x32x32 -> 128
# ---------------------------------------------------------------------------------------------------

class CifarEncoder(nn.Module):
    """phi for CIFAR-10: three conv(5x5) BN lrelu pool blocks (32, 64, 128 channels) -> linear(2048->128)."""

    def __init__(self, rep_dim=128, bn_affine=False):
        super().__init__()
        self.rep_dim, self.bn_affine = rep_dim, bn_affine
        self.conv1 = nn.Conv2d(3, 32, 5, padding=2, bias=False)
        self.bn1 = bn2d(32, bn_affine)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2, bias=False)
        self.bn2 = bn2d(64, bn_affine)
        self.conv3 = nn.Conv2d(64, 128, 5, padding=2, bias=False)
        self.bn3 = bn2d(128, bn_affine)
        self.fc = nn.Linear(128 * 4 * 4, rep_dim, bias=False)

    def forward(self, x):                                       # (B, 3, 32, 32)
        x = max_pool2(lrelu(self.bn1(self.conv1(x))))           # (B, 32, 16, 16)
        x = max_pool2(lrelu(self.bn2(self.conv2(x))))           # (B, 64, 8, 8)
        x = max_pool2(lrelu(self.bn3(self.conv3(x))))           # (B, 128, 4, 4)
        return self.fc(x.flatten(1))                            # (B, rep_dim) = z


class CifarDecoder(nn.Module):
    """z as (8,4,4) -> deconv(8->128) -> up -> deconv(128->64) -> up -> deconv(64->32) -> up -> deconv(32->3)."""

    def __init__(self, rep_dim=128, bn_affine=False):
        super().__init__()
        assert rep_dim % 16 == 0, "the decoder views z as (rep_dim/16, 4, 4)"
        self.deconv1 = nn.ConvTranspose2d(rep_dim // 16, 128, 5, padding=2, bias=False)
        self.bn1 = bn2d(128, bn_affine)
        self.deconv2 = nn.ConvTranspose2d(128, 64, 5, padding=2, bias=False)
        self.bn2 = bn2d(64, bn_affine)
        self.deconv3 = nn.ConvTranspose2d(64, 32, 5, padding=2, bias=False)
        self.bn3 = bn2d(32, bn_affine)
        self.deconv4 = nn.ConvTranspose2d(32, 3, 5, padding=2, bias=False)

    def forward(self, z):                                       # (B, rep_dim)
        x = lrelu(z.view(z.shape[0], -1, 4, 4))                 # (B, 8, 4, 4)
        x = lrelu(self.bn1(self.deconv1(x)))                    # (B, 128, 4, 4)
        x = lrelu(self.bn2(up2_deconv(self.deconv2, x)))        # (B, 64, 8, 8)    deconv2(up2(.))
        x = lrelu(self.bn3(up2_deconv(self.deconv3, x)))        # (B, 32, 16, 16)
        return torch.sigmoid(up2_deconv(self.deconv4, x))       # (B, 3, 32, 32)


class Autoencoder(nn.Module):
    """encoder (phi) -> [BatchNorm1d on the code, CIFAR-10 only] -> decoder."""

    def __init__(self, encoder, decoder, code_bn=False):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        rep_dim = encoder.rep_dim
        # The CIFAR-10 reference AE normalises the code; Deep SVDD's phi does not.
        self.code_bn = nn.BatchNorm1d(rep_dim, eps=BN_EPS, affine=False) if code_bn else nn.Identity()

    def forward(self, x):
        return self.decoder(self.code_bn(self.encoder(x)))


def build_encoder(dataset, rep_dim=None, bn_affine=False):
    """The stand-alone phi for `dataset` ('mnist' or 'cifar10'); rep_dim defaults to 32 / 128."""
    if dataset == "mnist":
        return MnistEncoder(rep_dim or 32, bn_affine)
    if dataset == "cifar10":
        return CifarEncoder(rep_dim or 128, bn_affine)
    raise ValueError(f"unknown dataset {dataset!r}: expected 'mnist' or 'cifar10'")


def build_autoencoder(dataset, rep_dim=None, bn_affine=False):
    """The LeNet-type autoencoder of Deep SVDD's reference code for `dataset` (bn_affine: see bn2d)."""
    encoder = build_encoder(dataset, rep_dim, bn_affine)
    if dataset == "mnist":
        return Autoencoder(encoder, MnistDecoder(encoder.rep_dim, bn_affine))
    ae = Autoencoder(encoder, CifarDecoder(encoder.rep_dim, bn_affine), code_bn=True)
    glorot_init(ae, linear=False)  # the CIFAR-10 reference: every (de)convolution Xavier-uniform, lrelu gain
    return ae


def glorot_init(ae, linear=True):
    """Re-initialise every weight Glorot-uniform, as the paper's Theano code (Lasagne's GlorotUniform).

    Gain sqrt(2 / (1 + 0.01^2)) (leaky ReLU, slope 0.01) for the (de)convolutions, 1 for the linear layer
    (left at PyTorch's default with linear=False, as the CIFAR-10 reference of the PyTorch port does);
    the Theano code gives the decoder's last convolution the ReLU gain sqrt(2), 4e-5 larger. PyTorch's
    default (Kaiming-uniform with a = sqrt(5)) draws the second convolution and the linear layer of the
    MNIST encoder from ranges 2-3x narrower.
    """
    gain = nn.init.calculate_gain("leaky_relu", LRELU_SLOPE)
    for m in ae.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight, gain=gain)
        elif linear and isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)


def encoder_copy(ae):
    """A stand-alone phi holding the autoencoder's encoder weights and BatchNorm running statistics.

    Deep SVDD and OC-NN start from the pretrained encoder; they train this copy, never the AE itself.
    """
    phi = type(ae.encoder)(ae.encoder.rep_dim, ae.encoder.bn_affine).to(next(ae.parameters()).device)
    phi.load_state_dict(ae.encoder.state_dict())
    return phi


# ---------------------------------------------------------------------------------------------------
# Shared by every training loop (ae.py, rcae.py, svdd.py, ocnn.py)
# ---------------------------------------------------------------------------------------------------

class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite: training stops and says where."""


def check_finite(loss, stage, epoch):
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"{stage}: the loss became {loss} at epoch {epoch}; "
                            f"try a smaller learning rate or check the input data")
    return loss


def adam_with_milestones(params, lr, weight_decay, milestones):
    """Adam + MultiStepLR(gamma=0.1), stepped once per epoch, as in the reference code."""
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=0.1)
    return optimizer, scheduler


def print_epoch(stage, record, epochs):
    """One progress line: epoch, loss, the stage's own quantities, lr, seconds."""
    extra = "".join(f"  {k} {v:.4g}" for k, v in record.items()
                    if k not in ("epoch", "loss", "lr", "seconds") and isinstance(v, (int, float)))
    print(f"[{stage}] epoch {record['epoch']:>3}/{epochs}  loss {record['loss']:.6g}{extra}"
          f"  lr {record['lr']:.1e}  {record['seconds']:.2f}s", flush=True)


# ---------------------------------------------------------------------------------------------------
# Training and scoring
# ---------------------------------------------------------------------------------------------------

def reconstruction_error(x_hat, x):
    """Per-sample squared error ||x - x_hat||^2 summed over C, H, W: (B, C, H, W) -> (B,)."""
    return ((x_hat - x) ** 2).flatten(1).sum(dim=1)


def train_epoch(ae, x, target, optimizer, generator, batch_size):
    """One pass over the data: minimise 1/B sum_i ||target_i - ae(x_i)||^2 per batch; returns the mean loss.

    Each batch is an index slice of a permutation drawn from `generator` (data.batches).
    """
    ae.train()
    total = 0.0
    for idx in data.batches(len(x), batch_size, generator):
        idx = idx.to(x.device)
        x_hat = ae(x[idx])                                              # (B, C, H, W)
        loss = reconstruction_error(x_hat, target[idx]).mean()          # 1/B sum_i ||target_i - x_hat_i||^2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
    return total / len(x)


def train_autoencoder(ae, x, *, epochs=150, lr=1e-4, weight_decay=0.5e-3, milestones=(50,),
                      batch_size=200, seed=0, verbose=True, stage="pretrain ae"):
    """Train `ae` to reconstruct `x`; returns the per-epoch history [{epoch, loss, lr, seconds}, ...].

    L = 1/B sum_i ||x_i - ae(x_i)||^2, minimised by Adam with weight decay (PyTorch's weight_decay is
    half the paper's lambda), the lr multiplied by 0.1 after each milestone epoch (reference schedule,
    Deep-SVDD-PyTorch README). `x` stays on its device; batches are index slices of a seeded permutation.
    """
    ae.to(x.device)
    optimizer, scheduler = adam_with_milestones(ae.parameters(), lr, weight_decay, milestones)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        loss = train_epoch(ae, x, x, optimizer, generator, batch_size)
        record = {"epoch": epoch, "loss": check_finite(loss, stage, epoch),
                  "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - start}
        scheduler.step()
        history.append(record)
        if verbose:
            print_epoch(stage, record, epochs)
    return history


@torch.no_grad()
def reconstruct(ae, x, batch_size=500):
    """ae(x) in eval mode (BN uses its running statistics), in large no-grad batches."""
    ae.eval()
    return torch.cat([ae(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def reconstruction_scores(ae, x, batch_size=500):
    """DCAE anomaly score s(x) = ||x - ae(x)||^2 per image, (N,); higher = more anomalous."""
    ae.eval()
    return torch.cat([reconstruction_error(ae(x[i:i + batch_size]), x[i:i + batch_size])
                      for i in range(0, len(x), batch_size)])


@torch.no_grad()
def encode(phi, x, batch_size=500):
    """phi(x) for a whole data set in eval mode (BN running statistics), in large no-grad batches: (N, D)."""
    phi.eval()
    return torch.cat([phi(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
