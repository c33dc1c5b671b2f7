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
