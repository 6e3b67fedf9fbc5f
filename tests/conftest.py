import pytest
import torch

from tests.remote_run import CompressedRun, write_recipe

pytest_plugins = ["tests.sshd"]


@pytest.fixture(scope="session")
def compressed_run(sshd_server, tmp_path_factory) -> CompressedRun:
    """One full `compress` (a local target and an ssh target), shared by test_remote, test_gate and test_report."""
    from edgedistill.pipeline import compress

    folder = tmp_path_factory.mktemp("remote_run")
    recipe = write_recipe(folder, sshd_server)
    torch.set_num_threads(1)
    return CompressedRun(recipe, folder / "run", compress(recipe, folder / "run"), sshd_server)
