#!/usr/bin/env bash
# The representation x objective matrix: every objective on one representation, one data set, as sweeps
# (resumable: started again, each skips its finished runs). One thread, so that two lanes share 2 cores.
#
#   bash results/matrix.sh mnist geom "0 1 2"      # a lane: MNIST, transformation prediction, seeds 0-2
#   bash results/matrix.sh mnist rcae "0 1 2"      # the other lane
#   python results/matrix.py                       # the tables and heatmaps of what has finished
#
# Budget (the hybrid runs' of results/README.md 7.1, whose AE row this matrix reuses): the autoencoders 10
# epochs (CIFAR-10: lr x0.1 after 8), transformation prediction its default epochs (MNIST 25, CIFAR-10 50),
# one-class and soft-boundary Deep SVDD 10 epochs (R set after 2), OC-NN joint 50 (head lr x0.1 after 20),
# the shallow detectors on the codes with their defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=$1 rep=$2 seeds=$3
export OMP_NUM_THREADS=1
flags=(--dataset "$dataset" --normal-class all --seeds $seeds --pretrain "$rep" --quiet --out "runs/matrix-$dataset")
case $rep in
    geom) flags+=(--no-bn-affine) ;;                                # Deep SVDD's Prop. 2: BatchNorm without a shift
    *) flags+=(--ae-epochs 10) ; [ "$dataset" = cifar10 ] && flags+=(--ae-milestones 8) ;;
esac
S() { python sweep.py "${flags[@]}" "$@"; }
S --objective own
S --objective kde --features codes
S --objective svdd --svdd-epochs 10
S --objective soft-svdd --svdd-epochs 10 --svdd-warmup 2
S --objective ocsvm --features codes
S --objective iforest --features codes
S --objective ocnn-joint --ocnn-epochs 50 --ocnn-lr-drop 20
