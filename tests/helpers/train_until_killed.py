"""Run by test_training: trains the tiny VAE and SIGKILLs itself right after a checkpoint."""

import os
import signal
import sys
from pathlib import Path

import torch

from cxr_pipeline.models.vae import train_vae
from tests.models.test_training import tiny_setup


def die_after_checkpoint(kill_at: int):
    def progress(event):
        if event.kind == "checkpoint" and event.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # a hard crash: no cleanup, no atexit

    return progress


if __name__ == "__main__":
    root, runs, kill_at, threads = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)  # the same as the test's own process, which trains the run to compare
    metadata, store, vae_config, train_config = tiny_setup(root)
    train_vae(metadata, store, runs, vae_config, train_config, "tiny", progress=die_after_checkpoint(kill_at))
    sys.exit("training finished without being killed")
