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
    `bn_affine=True` gives the paper's Theano code's learned scale and shift (run.py's MNIST default);
  * leaky ReLU with slope 0.01 (the paper's text says 0.1; both reference code bases use 0.01);
  * 2x2 max pooling in the encoder, nearest-neighbour x2 upsampling in the decoder.

The two ops marked `fast_ops` in the networks' forward passes (2x2 max pooling; upsampling followed by
a transposed convolution) are computed by equivalent, faster formulations; fast_ops.py says how, tests
prove them equal, and `fast_ops.plain_ops()` gives back the plain PyTorch ops.

The encoder is a module of its own (`MnistEncoder`, `CifarEncoder`) so that its state dict, BatchNorm
running statistics included, loads unchanged into the stand-alone phi that Deep SVDD trains.

Deviations from the reference code
  * `width` (run.py --width, default 1 = the reference networks) multiplies every (de)convolution's channels,
    the code size unchanged: to measure whether a wider network of the same shape learns more.
  * The CIFAR-10 autoencoder's BatchNorm1d on the code lives in the autoencoder, not in the encoder:
    the Deep SVDD network has none, so the encoder's state dict loads into phi with no key to drop.
  * Batches are index slices of a seeded permutation of an in-memory tensor (no DataLoader).

File order: the networks, their optional initializations (the Theano code's), the DCAE loss, training,
scoring.

Read next: rcae.py (the robust variant), then svdd.py or ocnn.py.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

import fast_ops
import training

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


# ---------------------------------------------------------------------------------------------------
# MNIST: 1x28x28 -> 32
# ---------------------------------------------------------------------------------------------------

class MnistEncoder(nn.Module):
    """phi for MNIST: conv(1->8,5x5) BN lrelu pool -> conv(8->4,5x5) BN lrelu pool -> linear(196->32); width w
    multiplies the channels (8w, 4w)."""

    def __init__(self, rep_dim=32, bn_affine=False, width=1):
        super().__init__()
        self.rep_dim, self.bn_affine, self.width = rep_dim, bn_affine, width
        c1, c2 = 8 * width, 4 * width
        self.conv1 = nn.Conv2d(1, c1, 5, padding=2, bias=False)
        self.bn1 = bn2d(c1, bn_affine)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2, bias=False)
        self.bn2 = bn2d(c2, bn_affine)
        self.fc = nn.Linear(c2 * 7 * 7, rep_dim, bias=False)

    def forward(self, x):                                       # (B, 1, 28, 28)
        pool = fast_ops.max_pool2                               # = F.max_pool2d(., 2), faster (fast_ops.py)
        x = pool(lrelu(self.bn1(self.conv1(x))))                # (B, 8, 14, 14)
        x = pool(lrelu(self.bn2(self.conv2(x))))                # (B, 4, 7, 7)
        return self.fc(x.flatten(1))                            # (B, rep_dim) = z


class MnistDecoder(nn.Module):
    """The mirror: z as (2,4,4) -> up -> deconv(2->4) -> up -> deconv(4->8) -> up -> deconv(8->1) -> sigmoid; width
    w: 4w and 8w channels."""

    def __init__(self, rep_dim=32, bn_affine=False, width=1):
        super().__init__()
        assert rep_dim % 16 == 0, "the decoder views z as (rep_dim/16, 4, 4)"
        c1, c2 = 4 * width, 8 * width
        self.deconv1 = nn.ConvTranspose2d(rep_dim // 16, c1, 5, padding=2, bias=False)
        self.bn1 = bn2d(c1, bn_affine)
        self.deconv2 = nn.ConvTranspose2d(c1, c2, 5, padding=3, bias=False)
        self.bn2 = bn2d(c2, bn_affine)
        self.deconv3 = nn.ConvTranspose2d(c2, 1, 5, padding=2, bias=False)

    def forward(self, z):                                       # (B, rep_dim)
        up_deconv = fast_ops.up2_deconv                         # = deconv(up2(.)), faster (fast_ops.py)
        x = z.view(z.shape[0], -1, 4, 4)                        # (B, 2, 4, 4)
        x = up_deconv(self.deconv1, lrelu(x))                   # (B, 4, 8, 8)
        x = up_deconv(self.deconv2, lrelu(self.bn1(x)))         # (B, 8, 14, 14): padding 3 trims 16 -> 14
        x = up_deconv(self.deconv3, lrelu(self.bn2(x)))         # (B, 1, 28, 28)
        return torch.sigmoid(x)


# ---------------------------------------------------------------------------------------------------
# CIFAR-10: 3x32x32 -> 128
# ---------------------------------------------------------------------------------------------------

class CifarEncoder(nn.Module):
    """phi for CIFAR-10: three conv(5x5) BN lrelu pool blocks (32, 64, 128 channels) -> linear(2048->128); width
    w multiplies the channels (32w, 64w, 128w)."""

    def __init__(self, rep_dim=128, bn_affine=False, width=1):
        super().__init__()
        self.rep_dim, self.bn_affine, self.width = rep_dim, bn_affine, width
        c1, c2, c3 = 32 * width, 64 * width, 128 * width
        self.conv1 = nn.Conv2d(3, c1, 5, padding=2, bias=False)
        self.bn1 = bn2d(c1, bn_affine)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2, bias=False)
        self.bn2 = bn2d(c2, bn_affine)
        self.conv3 = nn.Conv2d(c2, c3, 5, padding=2, bias=False)
        self.bn3 = bn2d(c3, bn_affine)
        self.fc = nn.Linear(c3 * 4 * 4, rep_dim, bias=False)

    def forward(self, x):                                       # (B, 3, 32, 32)
        pool = fast_ops.max_pool2                               # = F.max_pool2d(., 2), faster (fast_ops.py)
        x = pool(lrelu(self.bn1(self.conv1(x))))                # (B, 32, 16, 16)
        x = pool(lrelu(self.bn2(self.conv2(x))))                # (B, 64, 8, 8)
        x = pool(lrelu(self.bn3(self.conv3(x))))                # (B, 128, 4, 4)
        return self.fc(x.flatten(1))                            # (B, rep_dim) = z


class CifarDecoder(nn.Module):
    """z as (8,4,4) -> deconv(8->128) -> up -> deconv(128->64) -> up -> deconv(64->32) -> up -> deconv(32->3);
    width w: 128w, 64w, 32w channels."""

    def __init__(self, rep_dim=128, bn_affine=False, width=1):
        super().__init__()
        assert rep_dim % 16 == 0, "the decoder views z as (rep_dim/16, 4, 4)"
        c1, c2, c3 = 128 * width, 64 * width, 32 * width
        self.deconv1 = nn.ConvTranspose2d(rep_dim // 16, c1, 5, padding=2, bias=False)
        self.bn1 = bn2d(c1, bn_affine)
        self.deconv2 = nn.ConvTranspose2d(c1, c2, 5, padding=2, bias=False)
        self.bn2 = bn2d(c2, bn_affine)
        self.deconv3 = nn.ConvTranspose2d(c2, c3, 5, padding=2, bias=False)
        self.bn3 = bn2d(c3, bn_affine)
        self.deconv4 = nn.ConvTranspose2d(c3, 3, 5, padding=2, bias=False)

    def forward(self, z):                                       # (B, rep_dim)
        up_deconv = fast_ops.up2_deconv                         # = deconv(up2(.)), faster (fast_ops.py)
        x = lrelu(z.view(z.shape[0], -1, 4, 4))                 # (B, 8, 4, 4)
        x = lrelu(self.bn1(self.deconv1(x)))                    # (B, 128, 4, 4)
        x = lrelu(self.bn2(up_deconv(self.deconv2, x)))         # (B, 64, 8, 8)
        x = lrelu(self.bn3(up_deconv(self.deconv3, x)))         # (B, 32, 16, 16)
        return torch.sigmoid(up_deconv(self.deconv4, x))        # (B, 3, 32, 32)


class Autoencoder(nn.Module):
    """encoder (phi) -> [BatchNorm1d on the code, CIFAR-10 only] -> decoder."""

    def __init__(self, encoder, decoder, code_bn=False):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        rep_dim = encoder.rep_dim
        # The CIFAR-10 reference AE normalizes the code; Deep SVDD's phi does not.
        self.code_bn = nn.BatchNorm1d(rep_dim, eps=BN_EPS, affine=False) if code_bn else nn.Identity()

    def forward(self, x):
        return self.decoder(self.code_bn(self.encoder(x)))


def build_encoder(dataset, rep_dim=None, bn_affine=False, width=1):
    """The stand-alone phi for `dataset` ('mnist' or 'cifar10'); rep_dim defaults to 32 / 128; width multiplies
    every convolution's channels (1: the paper's networks)."""
    if dataset == "mnist":
        return MnistEncoder(rep_dim or 32, bn_affine, width)
    if dataset == "cifar10":
        return CifarEncoder(rep_dim or 128, bn_affine, width)
    raise ValueError(f"unknown dataset {dataset!r}: expected 'mnist' or 'cifar10'")


def build_autoencoder(dataset, rep_dim=None, bn_affine=False, width=1):
    """The LeNet-type autoencoder of Deep SVDD's reference code for `dataset` (bn_affine: see bn2d)."""
    encoder = build_encoder(dataset, rep_dim, bn_affine, width)
    if dataset == "mnist":
        return Autoencoder(encoder, MnistDecoder(encoder.rep_dim, bn_affine, width))
    ae = Autoencoder(encoder, CifarDecoder(encoder.rep_dim, bn_affine, width), code_bn=True)
    glorot_init(ae, linear=False)  # the CIFAR-10 reference: every (de)convolution Xavier-uniform, lrelu gain
    return ae


def encoder_copy(ae):
    """A stand-alone phi holding the autoencoder's encoder weights and BatchNorm running statistics.

    Deep SVDD and OC-NN start from the pretrained encoder; they train this copy, never the AE itself.
    """
    phi = type(ae.encoder)(ae.encoder.rep_dim, ae.encoder.bn_affine, ae.encoder.width).to(next(ae.parameters()).device)
    phi.load_state_dict(ae.encoder.state_dict())
    return phi


# ---------------------------------------------------------------------------------------------------
# Optional initializations: the paper's Theano code (run.py --ae-init)
# ---------------------------------------------------------------------------------------------------

def glorot_init(ae, linear=True):
    """Re-initialize every weight Glorot-uniform, as the paper's Theano code (Lasagne's GlorotUniform).

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
        try:
            D = torch.linalg.solve(A.T @ A + 1e-6 * torch.eye(n_filters), A.T @ P)
        except torch.linalg.LinAlgError:                                  # atoms coded identically (images
            D = torch.linalg.lstsq(A, P, driver="gelsd").solution         # with large blank areas): min-norm
        unused = A.abs().sum(0) == 0
        D[unused] = P[torch.randint(len(P), (int(unused.sum()),), generator=g)]
        D = F.normalize(D, dim=1)
    return D.reshape(n_filters, x.shape[1], size, size)


INITS = ("default", "dict", "theano")


def initialize(ae, init, x, seed=0):
    """The autoencoder's start before any training (run.py --ae-init), in place:

      default  PyTorch's initialization, as the PyTorch port (nothing to do)
      dict     the first convolution's filters from a sparse dictionary of x's patches (dictionary_filters)
      theano   Glorot-uniform weights (glorot_init), then dict: the paper's Theano code
    """
    if init not in INITS:
        raise ValueError(f"unknown initialization {init!r}: one of {INITS}")
    if init == "theano":
        glorot_init(ae)
    if init in ("dict", "theano"):
        conv1 = ae.encoder.conv1
        with torch.no_grad():
            conv1.weight.copy_(dictionary_filters(x, conv1.out_channels, conv1.kernel_size[0], seed=seed))


# ---------------------------------------------------------------------------------------------------
# The DCAE loss and score
# ---------------------------------------------------------------------------------------------------

def reconstruction_error(x_hat, x):
    """Per-sample squared error ||x - x_hat||^2 summed over C, H, W: (B, C, H, W) -> (B,)."""
    return ((x_hat - x) ** 2).flatten(1).sum(dim=1)


def dcae_loss(x_hat, x):
    """The DCAE loss of a batch: L = 1/B sum_i ||x_i - x_hat_i||^2."""
    return reconstruction_error(x_hat, x).mean()


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------

def train_epoch(ae, x, loss_fn, optimizer, generator, batch_size):
    """One pass over the data: a gradient step on loss_fn(ae(x_B), B) per mini-batch B; returns the mean loss.

    loss_fn(x_hat, idx) is the stage's own loss of the batch x[idx]: `dcae_loss` here, RCAE's in rcae.py.
    Each batch is an index slice of a permutation drawn from `generator` (training.batches).
    """
    ae.train()
    total = 0.0
    for idx in training.batches(len(x), batch_size, generator):
        idx = idx.to(x.device)
        loss = loss_fn(ae(x[idx]), idx)                                 # x_hat: (B, C, H, W)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
    return total / len(x)


def train_autoencoder(ae, x, *, epochs, weight_decay, milestones, lr=1e-4, batch_size=200, seed=0, verbose=True,
                      stage="pretrain ae", checkpoint=None):
    """Train `ae` to reconstruct `x`; returns the per-epoch history [{epoch, loss, lr, seconds}, ...].

    L = 1/B sum_i ||x_i - ae(x_i)||^2 (dcae_loss), minimised by Adam with weight decay (PyTorch's weight_decay
    is half the paper's lambda), the lr multiplied by 0.1 after each milestone epoch (reference schedule,
    Deep-SVDD-PyTorch README). epochs, weight_decay and milestones have no default: run.py's depend on the
    data set and --settings. `x` stays on its device; batches are index slices of a seeded permutation.
    checkpoint: a training.Checkpoint to save the state at epoch ends and resume from (None: no saving).
    """
    ae.to(x.device)

    def one_epoch(optimizer, generator):
        return train_epoch(ae, x, lambda x_hat, idx: dcae_loss(x_hat, x[idx]), optimizer, generator, batch_size)
    return training.train_loop(stage, ae, epochs, one_epoch, lr=lr, weight_decay=weight_decay, milestones=milestones,
                               seed=seed, verbose=verbose, checkpoint=checkpoint, name="ae")


# ---------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------

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
