"""Scale-out: lazy folder, manifest and WebDataset shard pools, and real 2-process torchrun runs on CPU (gloo)."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from edgedistill.config.schema import InputSpec
from edgedistill.errors import BadInput
from edgedistill.inputs.builtin import load_builtin
from edgedistill.inputs.images import iter_images
from edgedistill.inputs.pool import ArrayPart, FolderPart, ManifestPart, Pool, ShardsPart, expand_shards, part_of

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "teachers" / "mnist_lenet5.safetensors"
SPEC = InputSpec(channels=1, size=28, mean=[0.1307], std=[0.3081])
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Real images: 400 Fashion-MNIST pictures."""
    return load_builtin("fashion-mnist", count=400, seed=1).images


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(folder: Path, images: np.ndarray, per_shard: int) -> list[Path]:
    """WebDataset layout: samples `<key>.png` + `<key>.cls`, consecutive in each tar."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, start in enumerate(range(0, len(images), per_shard)):
        path = folder / f"pool-{shard:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(start, min(start + per_shard, len(images))):
                for name, data in ((f"s{i:06d}.png", png_bytes(images[i])), (f"s{i:06d}.cls", b"0")):
                    info = tarfile.TarInfo(f"samples/{name}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def collect(pool: Pool, workers: int = 0) -> tuple[dict[int, np.ndarray], list[str]]:
    images, bad = {}, []
    for keys, batch, reasons in pool.loader(workers):
        images.update(zip(keys.tolist(), batch.numpy()))
        bad += reasons
    return images, bad


def test_expand_shards_keeps_zero_padding_and_alternatives(tmp_path):
    assert [p.name for p in expand_shards("a-{008..011}.tar", tmp_path)] == ["a-008.tar", "a-009.tar", "a-010.tar", "a-011.tar"]
    assert [p.name for p in expand_shards("{x,y}-{0..1}.tar", tmp_path)] == ["x-0.tar", "x-1.tar", "y-0.tar", "y-1.tar"]
    assert expand_shards("/abs/one.tar", tmp_path) == [Path("/abs/one.tar")]


def test_shard_pool_decodes_every_sample_and_survives_damage(tmp_path, photos):
    paths = write_shards(tmp_path, photos[:250], per_shard=100)
    with tarfile.open(paths[0], "a") as tar:  # a corrupt image in a sound shard
        info = tarfile.TarInfo("samples/broken.png")
        info.size = 10
        tar.addfile(info, io.BytesIO(b"not a png!"))
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) // 2])  # a shard cut short mid-member
    images, bad = collect(Pool(SPEC, [ShardsPart("shards", paths)], batch_size=64))
    assert len(images) >= 200 + 10 and len(images) < 250
    first = {k & ((1 << 20) - 1): v for k, v in images.items() if (k >> 20) == 0}
    np.testing.assert_array_equal(first[3][0], photos[3])
    assert any("broken.png" in r for r in bad) and any("damaged shard" in r for r in bad)


def test_a_shard_cut_on_a_member_boundary_is_reported_truncated(tmp_path, photos):
    (path,) = write_shards(tmp_path, photos[:20], per_shard=20)
    with tarfile.open(path) as tar:
        boundary = tar.getmembers()[20].offset  # the 11th sample's header: ten whole samples (png + cls), then the end
    path.write_bytes(path.read_bytes()[:boundary])
    images, bad = collect(Pool(SPEC, [ShardsPart("shards", [path])], batch_size=64))
    assert len(images) == 10 and any("truncated after 10 samples (no end-of-archive marker" in r for r in bad)
    (whole,) = write_shards(tmp_path / "whole", photos[:20], per_shard=20)
    assert collect(Pool(SPEC, [ShardsPart("shards", [whole])], batch_size=64))[1] == []


def test_workers_and_ranks_split_the_pool_without_overlap(tmp_path, photos):
    """Every (rank, worker) reader gets disjoint units; together exactly the whole pool."""
    folder = tmp_path / "tree"
    for i, image in enumerate(photos[:130]):
        (folder / f"d{i % 3}" / f"e{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"d{i % 3}" / f"e{i % 2}" / f"{i:04d}.png")
    shards = write_shards(tmp_path / "shards", photos[130:330], per_shard=40)
    parts = [ArrayPart("array", photos[330:, None]), FolderPart("tree", folder), ShardsPart("shards", shards)]
    whole, _ = collect(Pool(SPEC, parts, batch_size=16))
    assert len(whole) == 400 and set(part_of(np.array(list(whole)))) == {0, 1, 2}
    shares = [collect(Pool(SPEC, parts, batch_size=16, rank=r, world_size=2), workers=2)[0] for r in range(2)]
    assert not set(shares[0]) & set(shares[1]) and set(shares[0]) | set(shares[1]) == set(whole)
    for share in shares:
        for key, image in share.items():
            np.testing.assert_array_equal(image, whole[key])
    assert [p.name for p in iter_images(folder)][:3] == ["0000.png", "0006.png", "0012.png"]


def test_manifest_pool_csv_and_parquet(tmp_path, photos):
    for i, image in enumerate(photos[:20]):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"{i}.png,x\n" for i in range(20)) + "missing.png,x\n")
    images, bad = collect(Pool(SPEC, [ManifestPart("m", tmp_path / "list.csv", "path")], batch_size=8))
    assert len(images) == 20 and len(bad) == 1 and "missing.png" in bad[0]
    with pytest.raises(BadInput, match="no column 'file'"):
        collect(Pool(SPEC, [ManifestPart("m", tmp_path / "list.csv", "file")]))
    pa = pytest.importorskip("pyarrow", reason="Parquet manifests need pyarrow (pip install 'edgedistill[parquet]')")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"file": [str(tmp_path / f"{i}.png") for i in range(20)]}), tmp_path / "list.parquet")
    parquet, _ = collect(Pool(SPEC, [ManifestPart("m", tmp_path / "list.parquet", "file")], batch_size=8))
    assert sorted(parquet) == sorted(images)


def test_stored_teacher_outputs_train_the_same_student_as_the_live_teacher(tmp_path, photos):
    """Without augmentation, one teacher pass memory-mapped from disk replaces the teacher forward of every step."""
    import torch

    from edgedistill.config.schema import ClassDropSpec, DistillSpec
    from edgedistill.inputs.images import convert_array
    from edgedistill.models.factory import create_model
    from edgedistill.stages.distill import distill

    images = convert_array(photos[:192], SPEC)
    teacher = create_model("lenet5", 10, 1).eval()
    spec = DistillSpec(epochs=2, batch_size=32, augment=None)
    students = []
    for cache in (None, tmp_path / "teacher_outputs.npy"):
        torch.manual_seed(0)
        student = create_model("lenet5_half", 10, 1)
        distill(teacher, student, images, spec, ClassDropSpec(), SPEC, seed=0, teacher_cache=cache)
        students.append(student.state_dict())
    assert np.load(tmp_path / "teacher_outputs.npy", mmap_mode="r").shape == (192, 10 + 84)
    for name, value in students[0].items():
        torch.testing.assert_close(students[1][name], value, rtol=1e-4, atol=1e-5)


def scale_recipe(folder: Path, photos: np.ndarray, epochs: int = 2, **distill) -> Path:
    """A pool of real files: WebDataset shards plus a built-in slice, and labeled MNIST to validate on."""
    write_shards(folder / "shards", photos, per_shard=64)
    data = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    data["teacher"]["weights"] = str(TEACHER)
    data["pool"] = [{"shards": "shards/pool-{0000..0006}.tar"}, {"builtin": "sklearn-digits"}]
    data["select"] = {"strategy": "balanced", "per_class": 80, "batch_size": 64}
    data["distill"].update({"epochs": epochs, "batch_size": 32, **distill})
    data["eval"] = {"labeled": "builtin:mnist-heldout", "limit": 300}
    data["compute"] = {"workers": 1}
    data["targets"] = [{"name": "cpu", "threads": 1, "iterations": 20, "budget": {"min_accuracy": 0.1}}]
    path = folder / "scale.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def launch(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def torchrun(recipe: Path, run: Path, *extra: str) -> list[str]:
    return [*TORCHRUN, "--standalone", "--nproc-per-node", "2", *extra, "-m", "edgedistill", "compress", str(recipe), "--run-dir", str(run)]


def test_two_ranks_select_what_one_process_selects_and_train_a_student_that_validates(tmp_path, photos):
    recipe = scale_recipe(tmp_path, photos, augment=None)  # without augmentation the ranks read stored teacher outputs
    one = launch([sys.executable, "-m", "edgedistill", "select", str(recipe), "--run-dir", str(tmp_path / "one")], tmp_path)
    out_one = one.communicate(timeout=600)[0]
    assert one.returncode == 0, out_one
    failing = yaml.safe_load(recipe.read_text())
    failing["targets"][0]["budget"]["p99_ms"] = 0.000001  # a budget no model meets: a verdict, not a crash
    (tmp_path / "failing.yaml").write_text(yaml.safe_dump(failing))
    two = launch(torchrun(tmp_path / "failing.yaml", tmp_path / "two"), tmp_path)
    out_two = two.communicate(timeout=600)[0]
    assert two.returncode == 0 and "ChildFailedError" not in out_two, out_two  # torchrun saw no crash
    assert "budget failed" in out_two and "edgedistill gate" in out_two
    gate = subprocess.run([sys.executable, "-m", "edgedistill", "gate", str(tmp_path / "two")], capture_output=True, text=True)
    assert gate.returncode == 3, gate.stdout + gate.stderr  # the verdict reaches CI
    a, b = np.load(tmp_path / "one" / "selected.npz"), np.load(tmp_path / "two" / "selected.npz")
    np.testing.assert_array_equal(a["pool_index"], b["pool_index"])
    # The same images, scored in other batches: channels_last kernels (the CPU default since 2026-12-08) may round a
    # probability differently by batch split (once 5 of 8,000 values, by 4e-9); the selection itself must not change.
    np.testing.assert_allclose(a["probs"], b["probs"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.load(tmp_path / "one" / "selected_images.npy"), np.load(tmp_path / "two" / "selected_images.npy"))
    selection = json.loads((tmp_path / "two" / "selection.json").read_text())
    assert selection["selected_from_source"].keys() == {"shards/pool-{0000..0006}.tar", "sklearn-digits"}
    assert selection["throughput"]["ranks"] == 2
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert not report["passed"] and report["targets"][0]["accuracy"] > 0.1 and len(report["history"]) == 2
    assert json.loads((tmp_path / "two" / "run.json").read_text())["ranks"] == 2
    assert out_two.count("select: scoring pool") <= 2  # rank 0 alone shows progress


def test_killed_rank_restarts_and_resumes_from_the_last_epoch(tmp_path, photos):
    """torchrun restarts the group when one rank dies; the new ranks resume from rank 0's epoch checkpoint."""
    recipe = scale_recipe(tmp_path, photos, epochs=30)
    run = tmp_path / "run"
    proc = launch(torchrun(recipe, run, "--max-restarts", "1"), tmp_path, start_new_session=True)
    deadline = time.time() + 300
    while not list(run.glob("distill-*.ckpt")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    ranks = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "edgedistill"], capture_output=True, text=True).stdout.split()
    victim = max(int(pid) for pid in ranks)  # the later-started worker: rank 1
    os.kill(victim, signal.SIGKILL)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    assert "resumed at epoch" in out
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 31))
    assert json.loads((run / "report.json").read_text())["passed"]


def test_bf16_autocast_and_channels_last_train_on_cpu(photos):
    """`compute.precision: bf16` and `channels_last` on CPU: losses are computed in float32 and stay finite."""
    import torch

    from edgedistill.config.schema import ClassDropSpec, ComputeSpec, DistillSpec
    from edgedistill.inputs.images import convert_array
    from edgedistill.models.factory import create_model
    from edgedistill.scale.compute import resolve_compute
    from edgedistill.stages.distill import distill

    compute = resolve_compute(ComputeSpec(precision="bf16", channels_last=True), torch.device("cpu"))
    assert compute.dtype is torch.bfloat16 and compute.channels_last
    torch.manual_seed(0)
    result = distill(
        create_model("lenet5", 10, 1).eval(),
        create_model("lenet5_half", 10, 1),
        convert_array(photos[:128], SPEC),
        DistillSpec(epochs=2, batch_size=32),
        ClassDropSpec(),
        SPEC,
        seed=0,
        compute=compute,
    )
    assert all(np.isfinite(h["loss"]) for h in result.history) and result.images_per_s > 0
    assert all(p.dtype == torch.float32 for p in result.student.parameters())


def test_torchrun_on_cuda_without_a_gpu_is_one_line_per_rank_not_a_cuda_traceback(tmp_path, photos):
    """The audit's multi-GPU recipe on a GPU-less machine: every rank stops in the pre-flight with the fix, before
    init_world's NCCL and CUDA setup ("Found no NVIDIA driver" in 50 lines of traceback)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a CUDA GPU")
    recipe = scale_recipe(tmp_path, photos)
    data = yaml.safe_load(recipe.read_text())
    data["compute"] = {"device": "cuda", "workers": 1}
    recipe.write_text(yaml.safe_dump(data))
    proc = launch(torchrun(recipe, tmp_path / "run"), tmp_path)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, out
    assert "Found no NVIDIA driver" not in out and "RuntimeError" not in out, out
    assert out.count("Traceback") <= 1 and "ChildFailedError" in out, out  # only torchrun's own report of its failed ranks
    errors = [line for line in out.splitlines() if line.startswith("error: compute.device: cuda")]
    assert len(errors) == 2 and "compute.device: auto" in errors[0], out  # one per rank
    assert not (tmp_path / "run" / "selection.json").exists()


def test_launch_problem_names_the_fix(monkeypatch):
    """NCCL joins CUDA ranks, one GPU each; CPU ranks join with gloo and need nothing."""
    import torch

    from edgedistill.scale.distributed import launch_problem

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert launch_problem("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert launch_problem("auto") is None
    problem = launch_problem("cuda")
    assert problem.startswith("torchrun: ") and "Hint:" in problem and "compute.device: cpu" in problem
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launch_problem("cuda") is None


def test_cgroup_quota_caps_the_usable_cpus(tmp_path):
    from edgedistill.scale.compute import _cgroup_cpu_quota

    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_cpu_quota(tmp_path / "v2") == 1.5
    (tmp_path / "v2" / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_quota(tmp_path / "v2") is None
    (tmp_path / "v1" / "cpu").mkdir(parents=True)
    (tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "v1" / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpu_quota(tmp_path / "v1") == 2.0
    assert _cgroup_cpu_quota(tmp_path / "none") is None


def test_cpu_threads_leave_the_cores_other_processes_keep_busy():
    """A CPU-bound process beside the run: the run takes the cores left, never more threads than free cores."""
    import subprocess
    import sys

    from edgedistill.scale.compute import cpu_threads, usable_cpus

    usable = usable_cpus()
    assert cpu_threads(3) == (3, {"threads": 3, "usable_cpus": usable, "source": "compute.threads"})
    assert cpu_threads(0)[0] == usable
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        chosen, why = cpu_threads(None)
    finally:
        burner.kill()
        burner.wait()
    assert why["source"] == "auto" and why["busy_elsewhere_cores"] >= 0.5
    assert 1 <= chosen <= max(1, usable - 1)
