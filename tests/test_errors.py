"""What a user reads when something is wrong: one line, the real message, exit status 2."""
import sys

import pytest
from torch.utils.data import DataLoader, Dataset

from unimatch.cli import exit_on_user_error
from unimatch.errors import DataError, user_message

MESSAGE = "photos/cat.jpg: cannot decode image (truncated); replace the file or remove the line"


class BrokenFile(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        raise DataError(MESSAGE)


def read_in_a_worker(argv):
    for _ in DataLoader(BrokenFile(), num_workers=1):
        pass


def test_a_data_error_in_a_loader_worker_reaches_the_user_as_its_own_message(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train"])
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(read_in_a_worker)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {MESSAGE}\n"


def test_messages_raised_in_the_main_process_pass_unchanged():
    assert user_message(DataError("Caught the bus; no worker here")) == "Caught the bus; no worker here"
    assert user_message(DataError(MESSAGE)) == MESSAGE


NO_CUDA = ("--device cuda: no CUDA device is available (torch.cuda.is_available() is False); "
           "use --device cpu or auto")


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_device_cuda_without_a_gpu_is_one_config_error_for_every_command(monkeypatch, command):
    """train and evaluate pick their device in setup_distributed, predict in pick_device: both check it."""
    import torch

    from unimatch.cli import pick_device
    from unimatch.distributed import setup_distributed
    from unimatch.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pick = pick_device if command == "predict" else lambda name: setup_distributed(name).device
    with pytest.raises(ConfigError) as error:
        pick("cuda")
    assert str(error.value) == NO_CUDA
    assert pick("auto").type == pick("cpu").type == "cpu"


@pytest.mark.parametrize("name, message", [
    ("gpu", "--device gpu: not a device; use auto, cpu or cuda (cuda:<index> for one GPU)"),
    ("", "--device : not a device; use auto, cpu or cuda (cuda:<index> for one GPU)"),
    ("mps", "--device mps: unsupported device type 'mps'; use auto, cpu or cuda (cuda:<index> for one GPU)"),
])
def test_unknown_device_names_are_refused_with_the_valid_ones(name, message):
    from unimatch.distributed import resolve_device
    from unimatch.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        resolve_device(name)
    assert str(error.value) == message


def test_a_cuda_index_beyond_the_machines_gpus_is_refused(monkeypatch):
    import torch

    from unimatch.distributed import resolve_device
    from unimatch.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"^--device cuda:1: this machine has 1 CUDA device\(s\), cuda:0 to cuda:0$"):
        resolve_device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
