"""TRL conventions (issue 26 item 6): report_to as TRL takes it, example YAML configs for every workflow
(parsed through the CLI's parser, nothing trained), runs that save their resolved options as YAML."""

import importlib
from pathlib import Path

import pytest

from sdpo.cli import COMMANDS, parse_command_args
from sdpo.trackers import TrackerError, parse_report_to, report_to_text, start_tracker

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# configs/<file>: (command, step) of the sdpo command that reads it
COMMAND_OF = {
    "online.yaml": ("train-online", None), "offline.yaml": ("train-offline", None), "eval.yaml": ("eval", None),
    "chat.yaml": ("chat", None), "spo-synthetic.yaml": ("spo", "synthetic"), "spo-generate.yaml": ("spo", "generate"),
    "spo-train.yaml": ("spo", "train"), "spo-evaluate.yaml": ("spo", "evaluate"),
}


def _arguments(command, step):
    module = importlib.import_module(f"sdpo.commands.{COMMANDS[command].module}")
    return module.SUBCOMMANDS[step][0] if step else module.ARGUMENTS


def test_every_workflow_has_an_example_config():
    found = {p.name for p in CONFIGS.glob("*.yaml")}
    assert set(COMMAND_OF) | {"rich.yaml"} <= found
    assert found <= set(COMMAND_OF) | {"rich.yaml"}, "a new config needs its command in COMMAND_OF"


@pytest.mark.parametrize("name", sorted(COMMAND_OF))
def test_config_parses_through_the_cli(name, tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)  # relative output directories are checked here, not in the checkout
    command, step = COMMAND_OF[name]
    args = parse_command_args(command, _arguments(command, step), ["--config", str(CONFIGS / name)])
    data = yaml.safe_load((CONFIGS / name).read_text())
    for key, value in data.items():
        got = getattr(args, key)
        if key == "report_to":
            assert report_to_text(parse_report_to(got)) == report_to_text(parse_report_to(value))
        else:
            assert got == value or str(got) == str(value), (key, got, value)


def test_rich_config_loads_into_the_example_parser(tmp_path):
    from sdpo.tasks import example_parser

    parser = example_parser("addition", "test")
    args = parser.parse_args(["--config", str(CONFIGS / "rich.yaml"), "--max-steps", "3"])
    assert args.method == "routing" and args.max_steps == 3 and args.train_size == 256  # the flag wins
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_stepz: 3\n")
    with pytest.raises(SystemExit):
        parser.parse_args(["--config", str(bad)])


# ------------------------------------------------------------------------------------- report_to
@pytest.mark.parametrize("value, expected", [
    (None, []), ("none", []), (["none"], []), ("trackio", ["trackio"]), ("trackio,tensorboard", ["trackio", "tensorboard"]),
    (["wandb", "trackio"], ["wandb", "trackio"]), (" TrackIO , trackio ", ["trackio"]),
])
def test_report_to_takes_trl_forms(value, expected):
    assert parse_report_to(value, check_installed=False) == expected


def test_report_to_refuses_with_one_clear_line():
    with pytest.raises(TrackerError, match="unknown tracker tensorbord"):
        parse_report_to("tensorbord")
    with pytest.raises(TrackerError, match="'none' cannot be combined"):
        parse_report_to("none,trackio")
    assert set(parse_report_to("all", allowed=("trackio", "wandb", "tensorboard"))) <= {"trackio", "wandb", "tensorboard"}


def test_missing_tracker_package_names_the_install(monkeypatch):
    import sdpo.trackers as t

    monkeypatch.setattr(t, "installed", lambda name: False)
    with pytest.raises(TrackerError, match=r"report_to=tensorboard needs the tensorboard package: pip install"):
        t.parse_report_to("tensorboard")


def test_online_config_normalises_report_to(tmp_path):
    from sdpo.trainers.online import OnlineSDPOConfig

    assert OnlineSDPOConfig(report_to=["trackio"], output_dir=str(tmp_path)).report_to == "trackio"
    assert OnlineSDPOConfig(report_to="None", output_dir=str(tmp_path)).report_to == "none"
    with pytest.raises(ValueError, match="report_to"):
        OnlineSDPOConfig(report_to="mlflow", output_dir=str(tmp_path))


def test_offline_report_to_with_commas_becomes_a_list(tmp_path):
    from sdpo.commands.train_offline import normalise_report_to
    from sdpo.trainers.offline import OfflineSDPOConfig

    pytest.importorskip("tensorboard")
    args = parse_command_args("train-offline", OfflineSDPOConfig, ["--report_to", "trackio,tensorboard",
                                                                   "--output_dir", str(tmp_path / "out")])
    normalise_report_to(args)
    assert args.report_to == ["trackio", "tensorboard"]


def test_tensorboard_tracker_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    tracker = start_tracker("tensorboard", project="p", name="r", config={"lr": 1e-5, "api_key": "s3cret"},
                            output_dir=tmp_path)
    tracker.log({"loss": 0.5, "note": "text"}, step=1)
    tracker.finish()
    events = list((tmp_path / "runs").glob("events.out.tfevents.*"))
    assert events and b"s3cret" not in events[0].read_bytes()


# ------------------------------------------------------------------------------ resolved configs
@pytest.mark.parametrize("command", ["train-online", "train-offline"])
def test_resolved_config_runs_again_with_config(command, tmp_path, monkeypatch):
    import yaml

    from sdpo.run_config import save_resolved_config

    monkeypatch.chdir(tmp_path)
    arguments = _arguments(command, None)
    args = parse_command_args(command, arguments, ["--config", str(CONFIGS / ("online.yaml" if command == "train-online"
                                                                           else "offline.yaml")),
                                                   "--learning_rate", "3e-6", "--output_dir", str(tmp_path / "run")])
    path = save_resolved_config(args, tmp_path / "run", "resolved.yaml")
    text = path.read_text()
    assert "hub_token" not in text and "api_key" not in text
    again = parse_command_args(command, arguments, ["--config", str(path)])
    assert again.learning_rate == 3e-6 and again.output_dir == str(tmp_path / "run")
    assert yaml.safe_load(text)["learning_rate"] == 3e-6
