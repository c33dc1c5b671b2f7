"""Split hygiene (issue 20 item 5), in the core for every task: one reader of split lists that
tolerates a UTF-8 BOM and CRLF line ends and refuses a name listed twice; overlaps between the
labelled, unlabelled, validation and test lists refused in one line naming both files and the
first shared entry (labelled among unlabelled only with ``allow_labeled_in_unlabeled: true``)."""
from __future__ import annotations

import logging
import shutil

import pytest

from unimatch.errors import DataError
from unimatch.splits import check_disjoint, read_split_lines


def test_bom_and_crlf_are_tolerated(tmp_path):
    listing = tmp_path / "labeled.txt"
    listing.write_bytes("\ufeffa.png\r\nb.png\r\n\r\n".encode("utf-8"))
    assert [entry for _, entry in read_split_lines(listing)] == ["a.png", "b.png"]


def test_a_name_listed_twice_is_refused(tmp_path):
    listing = tmp_path / "labeled.txt"
    listing.write_text("a.png\nb.png\na.png\n")
    with pytest.raises(DataError, match=r"labeled.txt:3: a.png is listed twice \(also on line 1\)"):
        read_split_lines(listing)


def test_overlaps_are_refused_naming_both_files_and_the_entry(tmp_path):
    for name, text in (("labeled", "a\nb\n"), ("unlabeled", "c\nd\n"), ("val", "e\nc\n")):
        (tmp_path / f"{name}.txt").write_text(text)
    lists = {kind: tmp_path / f"{kind}.txt" for kind in ("labeled", "unlabeled", "val")}
    with pytest.raises(DataError) as error:
        check_disjoint(lists)
    message = str(error.value)
    assert "\n" not in message and "unlabeled.txt" in message and "val.txt" in message and " c " in message


def test_labelled_among_unlabelled_only_when_allowed(tmp_path, caplog):
    (tmp_path / "labeled.txt").write_text("a\nb\n")
    (tmp_path / "unlabeled.txt").write_text("b\nc\n")
    lists = {"labeled": tmp_path / "labeled.txt", "unlabeled": tmp_path / "unlabeled.txt"}
    with pytest.raises(DataError, match="allow_labeled_in_unlabeled"):
        check_disjoint(lists)
    with caplog.at_level(logging.WARNING, logger="unimatch"):
        check_disjoint(lists, allow_labeled_in_unlabeled=True)
    assert "b" in caplog.text and "unlabeled.txt" in caplog.text


def test_natural_training_refuses_a_val_image_among_labelled(tmp_path):
    from tasks.natural import train
    from tasks.natural.synthetic import ensure_synthetic_voc
    from reliability_doc import TINY_2D

    root = ensure_synthetic_voc(tmp_path / "voc", n_images=8, size=32, seed=3, labeled_fraction=0.34)
    val = (root / "splits/val.txt").read_text().splitlines()[0]
    with open(root / "splits/labeled.txt", "a") as handle:
        handle.write(val + "\n")
    with pytest.raises(DataError, match="labeled.txt.*val.txt"):
        train.main(["--data-root", str(root), "--labeled-split", "splits/labeled.txt", "--unlabeled-split",
                    "splits/unlabeled.txt", "--val-split", "splits/val.txt", "--save-dir", str(tmp_path / "run"),
                    "--epochs", "1", "--device", "cpu", "--no-progress", *TINY_2D])


def test_change_detection_reads_a_bom_split(tmp_path):
    from tasks.change_detection.data import EvalPairs
    from tasks.change_detection.synthetic import ensure_synthetic_cd

    root = ensure_synthetic_cd(tmp_path / "cd", n_train=4, n_val=2, n_test=2, tile=32, seed=3)
    listing = tmp_path / "val.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + (root / "splits/val.txt").read_bytes().replace(b"\n", b"\r\n"))
    assert len(EvalPairs(root, listing)) == 2


def test_acdc_list_with_bom_is_read(tmp_path):
    from tasks.acdc.splits import read_split_list

    listing = tmp_path / "val.txt"
    listing.write_bytes(b"\xef\xbb\xbfdata/patient028_frame01.h5\r\ndata/patient028_frame02.h5\r\n")
    assert read_split_list(listing) == ["data/patient028_frame01.h5", "data/patient028_frame02.h5"]


def test_the_project_default_splits_do_not_overlap(tmp_path):
    """The synthetic sets and the split writers follow the rule the default enforces."""
    from tasks.change_detection.synthetic import ensure_synthetic_cd
    from tasks.natural.synthetic import ensure_synthetic_voc

    voc = ensure_synthetic_voc(tmp_path / "voc", n_images=8, size=32, seed=3, labeled_fraction=0.34)
    check_disjoint({kind: voc / "splits" / f"{kind}.txt" for kind in ("labeled", "unlabeled", "val", "test")})
    cd = ensure_synthetic_cd(tmp_path / "cd", n_train=8, n_val=2, n_test=2, tile=32, seed=3)
    for folder in sorted(p for p in (cd / "splits").iterdir() if p.is_dir()):
        check_disjoint({"labeled": folder / "labeled.txt", "unlabeled": folder / "unlabeled.txt",
                        "val": cd / "splits/val.txt", "test": cd / "splits/test.txt"})
    shutil.rmtree(tmp_path / "voc")
