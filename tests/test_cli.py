"""What the command line refuses, and how: one line and an exit code, never a traceback, and
never a value quietly taken for another."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_vqad


@pytest.mark.parametrize(
    "args,message",
    [
        (["synth", "{tmp}/s", "--size", "0"], "--size: must be at least 16"),
        (["synth", "{tmp}/s", "--n-train", "2"], "--n-train: must be at least 4"),
        # A traceback: "Unable to allocate 149. GiB".
        (["synth", "{tmp}/s", "--size", "100000"], "--size: must be at most 4096, got 100000"),
        # A name checked only when its turn came left the categories before it written.
        (["synth", "{tmp}/s", "--categories", "weave,foo"], "--categories: unknown category foo"),
        (["records", "{tmp}/line.db", "--limit", "-1"], "--limit: must be at least 1"),
        (["records", "{tmp}/line.db", "--frame-id", "-5"], "--frame-id: must be at least 0"),  # was "0 results"
        (["camera", "{tmp}", "--to", "tcp://127.0.0.1:5555", "--hwm", "0"], "--hwm: must be at least 1"),
        (["watch", "tcp://127.0.0.1:5556", "--count", "many"], "--count: expected an integer"),
        (["watch", "--count", "3"], "one of the arguments ENDPOINT --results is required"),
        (["watch", "tcp://127.0.0.1:5556", "--results", "tcp://127.0.0.1:5656"], "--results: not allowed with"),
        # Frames whose ids the daemon cannot read are dropped without a result.
        (["camera", "{tmp}", "--to", "tcp://127.0.0.1:5555", "--camera-id", ""], "--camera-id: an id is 1..128"),
        (["camera", "{tmp}", "--to", "tcp://127.0.0.1:5555", "--start-id", "-1"], "--start-id: must be at least 0"),
        (["ctl", "tcp://127.0.0.1:5557", "status", "--timeout", "0"], "--timeout: must be at least 0.1"),
        (["ctl", "status", "tcp://127.0.0.1:5557"], "the endpoint comes first: vqad ctl tcp://127.0.0.1:5557 status"),
        (["ctl", "tcp://127.0.0.1:5557", "stop"], "invalid choice: 'stop' (choose from status, set-threshold,"),
        # 0 was taken for "not given": a 3,000-step training, or a 60-minute guard.
        (["train", "{synth}/bracket", "--out", "{tmp}/run", "--steps", "0"], "train.steps must be >= 1"),
        (["train", "{synth}/bracket", "--out", "{tmp}/run", "--max-minutes", "0"], "train.max_minutes must be > 0"),
        # numpy's generator takes no negative seed: a traceback from deep in training.
        (
            ["train", "{synth}/bracket", "--out", "{tmp}/run", "--seed", "-1"],
            "train.seed must be in [0, 2**32), got -1",
        ),
        (["synth", "{tmp}/s", "--seed", "-1"], "--seed: must be at least 0, got -1"),
        # NaN or infinity would pass every frame.
        (["serve", "{tmp}/model", "--set", "edge.threshold=inf"], "edge.threshold must be a finite number > 0"),
    ],
)
def test_a_bad_number_is_refused_in_one_line(args, message, tmp_path, synth_root):
    proc = run_vqad(*(a.format(tmp=tmp_path, synth=synth_root) for a in args), check=False, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "s").exists()


def test_a_folder_the_system_refuses_is_one_line_and_exit_7(tiny_run, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run_vqad("export", tiny_run, "--out", blocker / "model", check=False)
    assert proc.returncode == 7 and "Traceback" not in proc.stderr
    assert f"cannot use {blocker}" in proc.stderr.strip().splitlines()[-1]
    # A run's folder given as a file: "cannot use a_file: File exists" said what the system saw.
    proc = run_vqad("train", tiny_run, "--out", blocker, check=False)
    assert proc.returncode == 2 and f"--out {blocker} is a file: a run is a folder" in proc.stderr


def test_a_refusal_that_names_no_file_says_where_to_find_it(monkeypatch, caplog):
    """A full disk met while writing a file already open raises an OSError without a file name:
    the line says -v shows which, instead of a bare "cannot use: No space left on device"."""
    import errno

    from vqad import cli
    from vqad.commands import line

    def full(_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(line, "cmd_dashboard", full)
    assert cli.main(["dashboard"]) == 7
    assert "cannot use a file or folder (-v shows which): No space left on device" in caplog.text


def test_a_reader_that_leaves_early_ends_the_command_in_silence(monkeypatch, caplog):
    """`vqad records ... | head`: the pipe closed under the command's output is exit 141 and no
    log line (it was "cannot use a file or folder: Broken pipe", exit 7). A broken pipe that is
    not standard output's is not hidden."""
    import os

    from vqad import cli
    from vqad.commands import line

    def long_listing(_args):
        for n in range(10_000):
            print(f"result {n:>8} " + "x" * 60)

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader, gone
    monkeypatch.setattr(line, "cmd_dashboard", long_listing)
    monkeypatch.setattr(sys, "stdout", os.fdopen(write_end, "w"))
    assert cli.main(["dashboard"]) == 141
    assert not caplog.records, caplog.text
    print("after the reader left")  # now into /dev/null, not a second BrokenPipeError
    sys.stdout.flush()
    sys.stdout.close()

    def socket_error(_args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(line, "cmd_dashboard", socket_error)
    monkeypatch.setattr(sys, "stdout", open(os.devnull, "w"))
    assert cli.main(["dashboard"]) == 7


def test_a_runs_broken_json_file_is_one_line_naming_it(tiny_run, synth_root, tmp_path):
    """threshold.json or split.json edited by hand and broken: the file is named, no traceback."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "threshold.json").write_text('{"value": 1.0,')
    proc = run_vqad("export", run, "--out", tmp_path / "model", check=False)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert f"{run / 'threshold.json'} cannot be read as JSON" in proc.stderr.strip().splitlines()[-1]
    (run / "split.json").write_text('["a.png"]')
    proc = run_vqad("eval", run, synth_root / "bracket", "--out", tmp_path / "eval", check=False)
    assert proc.returncode == 3 and "is not a split" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_of_a_data_folder_that_is_not_there_is_refused(tiny_run, tmp_path):
    """A mistyped DATA_CAT calibrated the threshold, measured nothing and exited 0."""
    before = (tiny_run / "threshold.json").read_bytes()
    proc = run_vqad("eval", tiny_run, tmp_path / "bracekt", "--out", tmp_path / "eval", check=False)
    assert proc.returncode == 3 and f"no such folder: {tmp_path / 'bracekt'}" in proc.stderr
    assert not (tmp_path / "eval").exists() and (tiny_run / "threshold.json").read_bytes() == before


def test_a_model_package_given_for_a_run_names_the_run(tiny_model, synth_root, tmp_path):
    """eval, export and embed read a training run; given the package exported from it, they said
    "checkpoint not found", which a quality engineer who just exported it cannot act on."""
    for args in (
        ["eval", tiny_model, synth_root / "bracket", "--out", tmp_path / "e"],
        ["export", tiny_model, "--out", tmp_path / "m"],
    ):
        proc = run_vqad(*args, check=False)
        assert proc.returncode == 3 and "is a model package, not a training run" in proc.stderr, proc.stderr
        assert "give the run it was exported from (" in proc.stderr


def test_a_data_folder_given_for_a_run_says_to_train_on_it_and_a_run_for_data_says_so(
    synth_root, tiny_run, tiny_model, tmp_path
):
    """eval and export given the category's folder (the arguments' order mixed up, or no
    training yet) said "checkpoint not found: …/checkpoint.pt"."""
    data = synth_root / "bracket"
    for args in (["eval", data, data, "--out", tmp_path / "e"], ["export", data, "--out", tmp_path / "m"]):
        proc = run_vqad(*args, check=False)
        assert proc.returncode == 3 and "is a data folder (train/good), not a training run" in proc.stderr, proc.stderr
        assert f"(vqad train {data} --out RUN_DIR)" in proc.stderr
    for run_or_model, what in ((tiny_run, "a training run"), (tiny_model, "a model package")):
        proc = run_vqad("train", run_or_model, "--out", tmp_path / "r", check=False)
        assert proc.returncode == 3 and f"{run_or_model} is {what}, not a data folder" in proc.stderr, proc.stderr
    proc = run_vqad("calibrate", data, data / "train" / "good", check=False)
    assert proc.returncode == 3 and "is a data folder (train/good), not a run nor a model package" in proc.stderr


def test_a_training_run_given_for_a_model_package_says_to_export_it(tiny_run, synth_root, tmp_path):
    """score and serve read a model package; given the training run it came from, they said
    "no model.json: is this an exported model?", a question the engineer must answer alone."""
    images = synth_root / "bracket" / "test" / "good"
    for args in (["score", tiny_run, images, "--out", tmp_path / "s"], ["serve", tiny_run, "--check"]):
        proc = run_vqad(*args, check=False)
        assert proc.returncode == 4 and "is a training run, not a model package: export it first" in proc.stderr
        assert f"(vqad export {tiny_run} --out MODEL_DIR)" in proc.stderr and "Traceback" not in proc.stderr


def test_watch_refuses_a_summary_it_could_not_write_before_watching(tmp_path):
    """--summary-json in a folder that is not there was found after the watch (hours, on a line)."""
    proc = run_vqad(
        "watch", "tcp://127.0.0.1:5599", "--timeout", "30", "--summary-json", tmp_path / "gone" / "s.json", check=False
    )
    assert proc.returncode == 7 and "summary:" not in proc.stdout
    assert f"cannot use {tmp_path / 'gone' / 's.json'}: {tmp_path / 'gone'} is no folder" in proc.stderr
    # A folder no file can be made in, which os.access calls writable for root (a read-only disk
    # too: ext4's emergency_ro still reads rw): tried with a file, as the record's folders are.
    proc = run_vqad("watch", "tcp://127.0.0.1:5599", "--timeout", "30", "--summary-json", "/proc/s.json", check=False)
    assert proc.returncode == 7 and "summary:" not in proc.stdout
    assert "cannot use /proc/s.json: /proc cannot be written (" in proc.stderr, proc.stderr
    # Overlays into a folder that is there but takes no file: each fail logged "not saved".
    proc = run_vqad("watch", "tcp://127.0.0.1:5599", "--timeout", "30", "--save-dir", "/proc", check=False)
    assert proc.returncode == 7 and "cannot use /proc: no file can be made in it (" in proc.stderr, proc.stderr


def test_an_export_of_reviews_into_a_folder_it_could_not_write_is_refused_first(tmp_path):
    """The reviewed evidence, read from the disk or fetched from the peers' dashboards, was
    refused at its first image."""
    from edge.record import Record

    Record(f"sqlite:///{tmp_path / 'line.db'}")
    proc = run_vqad("records", tmp_path / "line.db", "--export-reviewed", "/proc/sub/reviewed", check=False)
    assert proc.returncode == 7 and "cannot use /proc/sub/reviewed: /proc cannot be written (" in proc.stderr


def test_embed_and_eval_refuse_an_output_they_could_not_write_before_the_work(tiny_run, synth_root):
    """The embeddings' file was refused after every image was read and encoded, the report's
    folder after the threshold was calibrated and the test set scored."""
    proc = run_vqad("embed", tiny_run, tiny_run, "--out", "/proc/sub/e.npz", check=False)
    assert proc.returncode == 7 and "cannot use /proc/sub/e.npz: /proc cannot be written (" in proc.stderr
    before = (tiny_run / "threshold.json").read_bytes()
    proc = run_vqad("eval", tiny_run, synth_root / "bracket", "--out", "/proc/sub/eval", check=False)
    assert proc.returncode == 7 and "cannot use /proc/sub/eval: /proc cannot be written (" in proc.stderr
    assert (tiny_run / "threshold.json").read_bytes() == before


def test_export_refuses_an_output_it_could_not_write_before_the_graphs_and_their_proof(tiny_run, tmp_path):
    """A file at --out, or a folder no file can be made in, was refused when the package was
    moved into place: after the graphs were traced and their parity proved (a minute)."""
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", Path("/proc")):
        proc = run_vqad("export", tiny_run, "--out", out, check=False)
        assert proc.returncode == 7 and f"cannot use {out}: no file can be made in it (" in proc.stderr, proc.stderr
        assert "exporting FP32 graph" not in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]  # no staging folder left


def test_score_refuses_a_folder_for_its_pictures_that_it_could_not_write_before_the_model_loads(tiny_model, tmp_path):
    """`vqad score --out` on a read-only folder failed at its first picture, after a batch was scored."""
    (tmp_path / "a.png").write_bytes(b"")  # never read: the refusal comes first
    proc = run_vqad("score", tiny_model, tmp_path / "a.png", "--out", "/proc", check=False)
    assert proc.returncode == 7 and "cannot use /proc: no file can be made in it (" in proc.stderr, proc.stderr
    assert "onnxruntime" not in proc.stderr


def test_every_argument_says_what_it_is():
    """`vqad COMMAND --help` explains each positional and option: an integrator on the line
    has the help, not the source."""
    import argparse

    from vqad.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    unexplained = [
        f"{name} {action.option_strings[0] if action.option_strings else action.dest}"
        for name, parser in commands.choices.items()
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._HelpAction)
    ]
    assert not unexplained, unexplained


def test_training_on_a_box_with_the_lines_packages_only_names_the_extra(tmp_path):
    """`vqad[edge]` (a line's box) installs train/'s code but not torch or onnx: a command that
    needs them is one line naming the extra that brings them, not a traceback."""
    from tests.edge_helpers import NOT_ON_THE_EDGE

    blocked = "import sys; " + "".join(f"sys.modules[{n!r}] = None; " for n in NOT_ON_THE_EDGE if n != "train")
    launch = blocked + "from vqad.cli import main; sys.exit(main(sys.argv[1:]))"
    for args, missing in ((["train", str(tmp_path), "--out", str(tmp_path / "run")], "torch"),
                          (["export", str(tmp_path), "--out", str(tmp_path / "model")], "onnx")):  # fmt: skip
        proc = subprocess.run([sys.executable, "-c", launch, *args], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 1, proc.stderr
        assert f"vqad {args[0]} needs {missing}" in proc.stderr and "pip install 'vqad[train]'" in proc.stderr
        assert "Traceback" not in proc.stderr


def _option_strings(parser) -> set[str]:
    """Every flag `parser` and the subcommands under it take."""
    import argparse

    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


def test_every_flag_the_docs_give_a_command_is_one_it_takes():
    """`vqad SUBCOMMAND ... --flag` in the README and docs/: each flag is the subcommand's (a flag
    renamed in the code and not in the docs sends a reader to an argparse error)."""
    import argparse
    import re

    from vqad.cli import build_parser

    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    takes = {name: _option_strings(sub) for name, sub in subcommands.items()}
    checked, unknown = 0, []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            # A command runs to the end of its inline code, a table cell, a comment or the line;
            # a comment that lists its options ("# [--config FILE] ...") is the command's.
            line = line.replace("# [--", "[--")
            line = line if line.lstrip().startswith("|") else line.replace("|", "/")  # a cell only in a table
            for command in re.finditer(r"vqad ([a-z-]+)([^`|;#\n]*)", line):
                name, rest = command.groups()
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest) if name in takes else []:
                    checked += 1
                    if flag not in takes[name]:
                        unknown.append(f"{doc.name}:{n}: vqad {name} {flag}")
    assert checked > 100 and not unknown, unknown


@pytest.mark.parametrize(
    "args",
    [
        ["records", "{tmp}/none/line.db"],  # refused: exit 3, one line on stderr
        "synth {tmp}/s --categories bracket --size 32 --n-train 4 --n-test-good 1 --n-per-defect 1".split(),
        ["train", "--help"],  # argparse's own exit, on stdout
        ["synth", "{tmp}/s", "--size", "0"],  # argparse's refusal: exit 2
    ],
)
def test_a_forked_command_answers_as_python_m_vqad_cli_does(args, tmp_path):
    """run_vqad forks its commands from a process that holds their imports (tests/forked_cli.py):
    the exit code, standard output and error must be those of `python -m vqad.cli` itself."""
    from tests import forked_cli

    answers = []
    for way in ("forked", "python -m"):
        out = tmp_path / way
        argv = [a.format(tmp=out) for a in args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if way == "forked":
            proc = forked_cli.run_forked(argv, ROOT, env, timeout=120)
        else:
            proc = subprocess.run([sys.executable, "-m", "vqad.cli", *argv], capture_output=True, text=True,
                                  timeout=120, cwd=ROOT, env=env)  # fmt: skip
        # Log lines carry their time, synth its duration; the folders differ by name.
        stderr = re.sub(r"^\S+ \S+ ", "", proc.stderr.replace(str(out), "OUT"), flags=re.M)
        stdout = re.sub(r" in [\d.]+s ", " in Ts ", proc.stdout.replace(str(out), "OUT"))
        answers.append((proc.returncode, stdout, stderr))
    assert answers[0] == answers[1]
    assert answers[0][1] or answers[0][2]  # something was said


def test_vqad_score_names_a_few_unscored_images_and_counts_the_rest(caplog):
    """A folder with unreadable files is not read as judged: exit 3, five named, the rest counted."""
    import logging

    from edge.frames import named_few
    from vqad.commands.line import _unscored_exit

    rows = [{"image": f"{i}.png", "status": "error" if i < 7 else "ok"} for i in range(9)]
    with caplog.at_level(logging.ERROR):
        assert _unscored_exit(rows) == 3
    assert "7 of 9 images not scored: 0.png, 1.png, 2.png, 3.png, 4.png and 2 more" in caplog.text
    assert _unscored_exit(rows[7:]) == 0
    assert named_few(["a", "b"], 2) == "a, b" and named_few(["a", "b", "c"], 2) == "a, b and 1 more"
