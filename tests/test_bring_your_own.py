"""A user's own defense, data, model and device: the README example, run as written, and the
one-line errors of each input; the core's independence from the bundled defenses."""

from __future__ import annotations

import ast
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run
from torch import nn

from defcon.catalog import builtin_catalog, load_catalog_file, specs_from
from defcon.engine.data import from_arrays, load_dataset, read_csv
from defcon.engine.defense import contract_problems
from defcon.engine.devices import place, resolve_device
from defcon.engine.models import ArchConfig, build_model
from defcon.engine.registry import make_defense
from defcon.errors import DefconError
from pipeline_stages.in_training.group_fairness import GroupFairness

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore")


def test_the_core_never_imports_the_bundled_defenses():
    offenders = []
    for path in sorted((ROOT / "defcon").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}:{node.lineno}" for n in names
                          if n.split(".")[0] == "pipeline_stages"]  # fmt: skip
    assert offenders == []


def test_built_ins_come_from_the_entry_point_group():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '[project.entry-points."defcon.catalogs"]' in pyproject
    assert 'builtin = "pipeline_stages:catalog"' in pyproject
    specs = list((ROOT / "pipeline_stages").glob("*_training/*.toml"))
    assert len(builtin_catalog()) == len(specs) > 0  # one spec file per built-in defense


def test_a_broken_catalog_provider_is_one_line():
    from importlib.metadata import EntryPoint

    broken = EntryPoint(name="broken", value="json:loads", group="defcon.catalogs")
    with pytest.raises(DefconError, match="defense catalog 'broken'.*failed to load"):
        specs_from(broken)


# --------------------------------------------------------------------------- README example

EXAMPLES = ROOT / "docs" / "bring_your_own.md"  # the README links it as the worked example


def _readme_files() -> dict[str, str]:
    """Code blocks of the worked example whose first line is '# file: NAME'."""
    text = EXAMPLES.read_text()
    files = {}
    for block in re.findall(r"```(?:toml|python)\n(.*?)```", text, re.S):
        first, _, rest = block.partition("\n")
        if first.startswith("# file: "):
            files[first.removeprefix("# file: ").strip()] = rest
    return files


def _readme_command(verb: str) -> list[str]:
    line = next(
        line for line in EXAMPLES.read_text().splitlines()
        if line.startswith(f"defcon {verb} centroid_filter")
    )  # fmt: skip
    return shlex.split(line)[1:]


def write_loans(path: Path, rows: int = 600) -> None:
    """A user's table: numbers, text categories, a sensitive column and a label."""
    rng = np.random.default_rng(7)
    age = rng.integers(18, 70, rows)
    income = rng.normal(40, 12, rows).round(1)
    region = rng.choice(["north", "south", "east", "west"], rows)
    sex = rng.choice(["female", "male"], rows)
    score = 0.05 * (income - 40) + 0.02 * (age - 40) + (region == "north") * 0.5
    approved = np.where(score + rng.normal(0, 0.5, rows) > 0, "yes", "no")
    lines = ["age,income,region,sex,approved"]
    lines += [f"{a},{i},{r},{s},{y}" for a, i, r, s, y in
              zip(age, income, region, sex, approved, strict=True)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """The README's files in a folder of the user's own, which is the working directory."""
    for name, text in _readme_files().items():
        (tmp_path / name).write_text(text)
    write_loans(tmp_path / "loans.csv")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for module in ("my_defenses", "my_model"):
        sys.modules.pop(module, None)


def test_readme_example_composes_a_user_defense_on_user_data_and_model(user_folder):
    assert {"my_defenses.toml", "my_defenses.py", "my_model.py"} <= set(_readme_files())
    checked = run(*_readme_command("check"))
    assert checked.exit_code == 0, checked.stderr
    result = run(*_readme_command("compose"))
    assert result.exit_code == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "centroid_filter → dp_sgd on loans.csv" in text
    assert "attack_success_rate" in text and "mia_auc" in text
    (path,) = (user_folder / "defcon-runs" / "records").glob("*.json")
    from defcon.report.reports import load_record

    record = load_record(path)
    assert record.device == "cpu" and record.model == "my_model:build"
    assert record.dataset == "loans.csv" and record.dataset_sha256
    assert {r.defense for r in record.results} == {"centroid_filter", "dp_sgd"}
    # the spec is the identity: the user's class is bound to it
    catalog = builtin_catalog().merged(load_catalog_file("my_defenses.toml"))
    defense = make_defense("centroid_filter", {"drop_fraction": 0.1}, catalog)
    assert defense.name == "centroid_filter" and defense.config.drop_fraction == 0.1


# --------------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--dataset", "loans.csv"], ["CSV table", "--target"]),
        (["--dataset", "loans.csv", "--target", "nope"], ["--target 'nope'", "approved"]),
        (["--dataset", "loans.csv", "--target", "approved", "--sensitive", "approved"],
         ["--sensitive"]),
        (["--dataset", "missing.npz"], ["does not exist"]),
        (["--dataset", "loans.csv", "--target", "approved", "--model", "my_model:nothing"],
         ["--model 'my_model:nothing'", "cannot be loaded"]),
        (["--dataset", "loans.csv", "--target", "approved", "--model", "my_model"],
         ["module:name"]),
        (["--dataset", "digits", "--device", "gpu"], ["--device 'gpu'", "cuda:N"]),
        (["--dataset", "digits", "--target", "x"], ["built-in dataset 'digits'"]),
        (["--dataset", "loans.csv", "--target", "approved", "--model", "my_model:wrong_shape"],
         ["must return logits"]),
    ],
)  # fmt: skip
def test_bad_user_input_is_one_line(user_folder, extra, fragments):
    (user_folder / "my_model.py").write_text(
        (user_folder / "my_model.py").read_text()
        + "\n\ndef wrong_shape(input_shape, num_classes):\n    return nn.Linear(input_shape[0], 1)\n"
    )
    result = run("compose", "centroid_filter", "dp_sgd", "--catalog", "my_defenses.toml",
                 "--profile", "tiny", *extra)  # fmt: skip
    assert_one_line_error(result, *fragments)


def test_bad_npz_files_are_one_line(tmp_path):
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((4, 3)), y_train=np.zeros(4))
    (tmp_path / "junk.npz").write_text("not a zip")
    for name, fragment in (("partial.npz", "lacks x_test, y_test"), ("junk.npz", "not a readable")):
        result = run("compose", "model_watermark", "explanations", "--dataset",
                     str(tmp_path / name))  # fmt: skip
        assert_one_line_error(result, fragment)


def test_user_class_must_match_its_spec(user_folder):
    spec = load_catalog_file("my_defenses.toml")[0]
    wrong_stage = spec.model_copy(update={"stage": "post"})
    with pytest.raises(
        DefconError, match="must subclass defcon.engine.defense.PostTrainingDefense"
    ):
        make_defense(wrong_stage)
    # an in-training class overriding a hook its spec does not declare a slot for
    fairness = builtin_catalog()["group_fairness"]
    problems = contract_problems(
        GroupFairness, fairness.model_copy(update={"slots": {"finetune_phase"}})
    )
    assert any("declares slot finetune_phase" in p for p in problems)
    assert any("overrides loss_term" in p for p in problems)


# --------------------------------------------------------------------------- data and models


def test_npz_images_and_tables_are_told_apart_by_shape(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)  # N×H×W×C bytes
    np.savez(tmp_path / "pics.npz", x_train=images[:30], y_train=np.arange(30) % 3,
             x_test=images[30:], y_test=np.arange(10) % 3)  # fmt: skip
    data = load_dataset(str(tmp_path / "pics.npz"), seed=0)
    assert data.kind == "image" and data.input_shape == (1, 8, 8) and data.num_classes == 3
    assert float(data.train.x.min()) >= 0 and float(data.train.x.max()) <= 1
    table = from_arrays(
        torch.randn(50, 4) * 10,
        torch.tensor([0, 1] * 25),
        torch.randn(20, 4) * 10,
        torch.tensor([1, 0] * 10),
        s_train=np.arange(50) % 2,
        s_test=np.arange(20) % 2,
    )  # tensors, a sensitive attribute, features outside [0, 1]
    first, again = table.dataset(0), table.dataset(0)
    assert first.kind == "tabular" and first.sensitive_attribute == "s"
    assert torch.equal(first.val.x, again.val.x)  # validation carved from train by the seed
    assert len(first.train) + len(first.val) == 50 and len(first.test) == 20
    assert float(first.train.x.min()) >= 0 and float(first.train.x.max()) <= 1


def test_csv_one_hot_and_scaled(tmp_path):
    write_loans(tmp_path / "loans.csv", rows=100)
    data = read_csv(tmp_path / "loans.csv", "approved", sensitive="sex").dataset(1)
    assert data.kind == "tabular" and data.num_classes == 2 and data.sensitive_attribute == "sex"
    assert data.input_shape == (2 + 4 + 2,)  # age, income; region one-hot; sex one-hot
    assert {g.name for g in data.feature_groups if g.categorical} == {"region", "sex"}
    assert float(data.train.x.min()) >= 0 and float(data.train.x.max()) <= 1
    assert len(data.train) + len(data.val) + len(data.test) == 100


def _batchnorm_mlp(input_shape, num_classes):
    return nn.Sequential(nn.Linear(input_shape[0], 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Linear(16, num_classes))  # fmt: skip


def test_dp_sgd_adapts_a_user_model_and_pruning_refuses_it(tmp_path):
    from defcon.measure.composer import Composer

    composer = Composer("compas", profile="tiny", cache_dir=tmp_path, device="cpu",
                        model=_batchnorm_mlp)  # fmt: skip
    assert composer.model_factory == f"{__name__}:_batchnorm_mlp"
    arch = make_defense("dp_sgd").adapt_arch(composer.arch(composer.dataset(0)))
    model = build_model(arch, seed=0)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) and m.num_groups == 1 for m in model.modules())
    assert composer.model_problem(make_defense("dp_sgd"), composer.dataset(0)) is None
    with pytest.raises(DefconError, match="cannot compose with this model: backdoor_pruning"):
        composer.plan(["dp_sgd", "backdoor_pruning"])


def test_a_lambda_cannot_name_a_model():
    from defcon.engine.models import factory_name

    with pytest.raises(DefconError, match="no importable name"):
        factory_name(lambda shape, classes: nn.Linear(shape[0], classes))


# --------------------------------------------------------------------------- devices


def test_device_choices():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(DefconError, match="not understood"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DefconError, match="no CUDA device"):
            resolve_device("cuda:0")


def test_the_cpu_boundary_keeps_results_on_the_cpu():
    arch = ArchConfig(family="mlp", input_shape=(5,), num_classes=2)
    model = place(build_model(arch, seed=0), torch.device("cpu"))
    assert model(torch.zeros(3, 5)).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compose_on_cuda(tmp_path):
    """Every stage on the GPU: adversarial training + DP-SGD in one loop, a post-training API."""
    from defcon.measure.composer import Composer

    composer = Composer("digits", profile="tiny", cache_dir=tmp_path, device="cuda")
    record = composer.compose(["adversarial_training", "dp_sgd", "output_watermark"], seeds=1,
                              force=True)  # fmt: skip
    assert record.device.startswith("cuda")
    model = composer.run_pipeline(composer.pipeline(["dp_sgd"], 0, False)).model
    assert next(model.parameters()).device.type == "cuda"
    assert model(torch.zeros(2, 1, 8, 8)).device.type == "cpu"  # the CPU boundary


# --------------------------------------------------------------------------- torch Datasets
class _Loans(torch.utils.data.Dataset):
    """A user's own map-style Dataset yielding (features, label, group)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 5, generator=g) * 100
        self.s = torch.arange(n) % 2
        self.y = ((self.x[:, 0] > 50) ^ (self.s == 1)).long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i]), int(self.s[i])


def test_torch_datasets_compose_like_arrays(tmp_path):
    from torch.utils.data import TensorDataset

    from defcon.engine.torch_data import from_torch_datasets
    from defcon.measure.composer import Composer

    x, y = torch.rand(60, 1, 8, 8), torch.arange(60) % 3
    images = from_torch_datasets(TensorDataset(x[:45], y[:45]), TensorDataset(x[45:], y[45:]))
    same = from_arrays(x[:45], y[:45], x[45:], y[45:], name="torch-dataset")
    assert images.kind == "image" and images.digest == same.digest  # one content, one cache key
    loans = from_torch_datasets(_Loans(300, 0), _Loans(100, 1), name="loans")
    data = loans.dataset(0)
    assert data.kind == "tabular" and data.sensitive_attribute == "s" and data.num_classes == 2
    assert float(data.train.x.max()) <= 1
    composer = Composer(loans, profile="tiny", cache_dir=tmp_path, device="cpu")
    record = composer.compose(["group_fairness", "explanations"], seeds=1)
    assert record.dataset == "loans" and {r.defense for r in record.results} == {
        "group_fairness",
        "explanations",
    }


@pytest.mark.parametrize(
    ("train", "fragment"),
    [
        ([(1, 2)], "expected a map-style torch Dataset"),
        (torch.utils.data.TensorDataset(torch.rand(4, 3)), "items have 1 parts"),
        (torch.utils.data.TensorDataset(torch.rand(0, 3), torch.zeros(0)), "is empty"),
    ],
)
def test_bad_torch_datasets_are_one_line(train, fragment):
    from torch.utils.data import TensorDataset

    from defcon.engine.torch_data import from_torch_datasets

    test = TensorDataset(torch.rand(4, 3), torch.zeros(4))
    with pytest.raises(DefconError, match=fragment):
        from_torch_datasets(train, test)
