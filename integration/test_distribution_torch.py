"""PyTorch `DistributedDataParallel` training of locally connected layers.

Under the torch backend a Keras model is a `torch.nn.Module`, so DDP wraps it
as it is and a torch training loop trains it. Two processes started by
`torchrun` (gloo on the CPU; nccl where two GPUs are) each train a replica on
their half of every batch; one plain process, the reference, trains the same
model from the same weights on the whole batches. All of them run this file
as a script, in child processes; the tests compare what they write.

The module imports no backend at its top: the children choose Keras' torch
device before `keras` is imported, and under the other backends the tests
are deselected without importing torch.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from integration import data_parallel
from integration.data_parallel import ROOT, TOLERANCE, max_difference

WORLD_SIZE = 2
BATCH = 8  # the whole batch; each of the two replicas gets 4
STEPS = 3
LEARNING_RATE = 1.0


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((STEPS, BATCH, 6, 6, 2)).astype("float32")
    y = rng.standard_normal((STEPS, BATCH, 6, 6, 2)).astype("float32")
    return x, y


def _child_main(mode, out_dir):
    """Train for STEPS steps; write losses and weights to `out_dir`.

    `mode` "reference": one process, no process group, whole batches.
    `mode` "ddp": one rank of a `torchrun` job, half of every batch.
    """
    import torch

    distributed = mode == "ddp"
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    nccl = torch.cuda.is_available() and torch.cuda.device_count() >= WORLD_SIZE
    device = f"cuda:{local_rank}" if nccl else "cpu"
    # Keras reads its torch device once, at import: each rank its own GPU,
    # and the CPU for gloo even where one GPU is visible.
    os.environ["KERAS_TORCH_DEVICE"] = device
    if nccl:
        torch.cuda.set_device(local_rank)
        # TF32 would round the two runs' differently grouped sums far above
        # TOLERANCE.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    import keras

    model = data_parallel.model()
    initial = data_parallel.initial_weights(
        [tuple(v.shape) for v in model.weights], np.random.default_rng(1)
    )
    model.set_weights(initial)

    module = model
    if distributed:
        torch.distributed.init_process_group("nccl" if nccl else "gloo")
        module = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if nccl else None
        )
    optimizer = torch.optim.SGD(module.parameters(), lr=LEARNING_RATE)

    x, y = _data()
    # Equal halves: the mean of the per-rank mean losses, which is what
    # DDP's gradient averaging differentiates, is the whole batch's mean.
    per_rank = BATCH // world_size
    part = slice(rank * per_rank, (rank + 1) * per_rank)
    losses, global_losses = [], []
    for step in range(STEPS):
        inputs = torch.as_tensor(x[step, part], device=device)
        targets = torch.as_tensor(y[step, part], device=device)
        optimizer.zero_grad()
        loss = torch.mean(torch.square(module(inputs) - targets))
        loss.backward()
        optimizer.step()
        total = loss.detach().clone()
        if distributed:
            torch.distributed.all_reduce(total)  # gloo has SUM, not AVG
        losses.append(float(loss.detach()))
        global_losses.append(float(total) / world_size)

    result = {
        "mode": mode,
        "rank": rank,
        "world_size": world_size,
        "process_group_backend": (
            torch.distributed.get_backend() if distributed else None
        ),
        "device": device,
        "keras_backend": keras.backend.backend(),
        "wrapped_in": type(module).__name__,
        "inputs_seen": [int(part.start), int(part.stop)],
        "losses": losses,
        "global_losses": global_losses,
        "initial_weights": {v.path: w.tolist() for v, w in zip(model.weights, initial)},
        "weights": {
            v.path: keras.ops.convert_to_numpy(v.value).tolist() for v in model.weights
        },
    }
    path = pathlib.Path(out_dir) / f"{mode}_rank{rank}.json"
    path.write_text(json.dumps(result))
    if distributed:
        torch.distributed.destroy_process_group()


def _loopback_interface():
    # gloo binds the interface the host name resolves to unless told which:
    # keep the ranks' traffic on loopback.
    for _, name in socket.if_nameindex():
        if name.startswith("lo"):
            return name
    return None


def _run(command, env):
    completed = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert completed.returncode == 0, (
        f"{command} failed ({completed.returncode}):\n{completed.stderr[-4000:]}"
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    # Two ranks on a 2-core CI machine: one thread each.
    env = data_parallel.child_environment(KERAS_BACKEND="torch", OMP_NUM_THREADS="1")
    interface = _loopback_interface()
    if interface:
        env["GLOO_SOCKET_IFNAME"] = interface
    script = str(pathlib.Path(__file__).resolve())
    _run([sys.executable, script, "reference", str(out_dir)], env)
    # --standalone: a rendezvous on localhost at a free port.
    _run(
        [
            sys.executable,
            *("-m", "torch.distributed.run", "--standalone"),
            *("--nproc_per_node", str(WORLD_SIZE)),
            *(script, "ddp", str(out_dir)),
        ],
        env,
    )

    def load(name):
        return json.loads((out_dir / name).read_text())

    return {
        "reference": load("reference_rank0.json"),
        "ranks": [load(f"ddp_rank{rank}.json") for rank in range(WORLD_SIZE)],
    }


@pytest.mark.backends("torch")
@pytest.mark.training
def test_two_ddp_ranks_train_keras_models_each_on_its_half_of_the_batch(runs):
    reference, ranks = runs["reference"], runs["ranks"]
    assert reference["world_size"] == 1
    assert reference["process_group_backend"] is None
    assert reference["inputs_seen"] == [0, BATCH]
    for rank, result in enumerate(ranks):
        assert result["rank"] == rank
        assert result["world_size"] == WORLD_SIZE
        assert result["keras_backend"] == "torch"
        assert result["wrapped_in"] == "DistributedDataParallel"
        expected = "nccl" if result["device"].startswith("cuda") else "gloo"
        assert result["process_group_backend"] == expected
        half = BATCH // WORLD_SIZE
        assert result["inputs_seen"] == [rank * half, (rank + 1) * half]
    # The halves differ, so the ranks' own losses do.
    assert ranks[0]["losses"][0] != pytest.approx(ranks[1]["losses"][0], rel=1e-3)


@pytest.mark.backends("torch")
@pytest.mark.training
def test_ddp_replicas_hold_the_same_weights_after_training(runs):
    rank0, rank1 = runs["ranks"]
    assert max_difference(rank0["weights"], rank1["weights"]) == 0.0


@pytest.mark.backends("torch")
@pytest.mark.training
def test_ddp_losses_and_weights_equal_one_process_on_the_whole_batch(runs):
    reference, rank0 = runs["reference"], runs["ranks"][0]
    assert rank0["initial_weights"] == reference["initial_weights"]
    # Training moved the weights, so the comparison below compares something.
    assert max_difference(reference["weights"], reference["initial_weights"]) > 1e-2

    assert len(rank0["global_losses"]) == STEPS
    np.testing.assert_allclose(
        rank0["global_losses"], reference["losses"], rtol=0, atol=TOLERANCE
    )
    assert set(rank0["weights"]) == {
        "lc2d/kernel",
        "lc2d/bias",
        "lc2dt/kernel",
        "lc2dt/bias",
    }
    for path, weight in reference["weights"].items():
        np.testing.assert_allclose(
            rank0["weights"][path], weight, rtol=0, atol=TOLERANCE, err_msg=path
        )


if __name__ == "__main__":
    _child_main(*sys.argv[1:])
