"""Policy files: the shipped ones load, defaults fill missing sections, bad ones say why."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dpgov.errors import UsageError
from dpgov.policy import load_policy

REPO = Path(__file__).resolve().parents[3]
MINIMAL = "version: 1\nbudget: {epsilon_per_block: 8.0, delta: 1.0e-5, accountant: pld}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def with_section(tmp_path: Path, section: str, values: dict) -> Path:
    data = yaml.safe_load(MINIMAL)
    data[section] = values
    return write(tmp_path, yaml.safe_dump(data))


def rejected(path: Path) -> str:
    with pytest.raises(UsageError) as err:
        load_policy(path)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_packaged_default_is_an_exact_copy_of_policies_default():
    packaged = REPO / "src" / "dpgov" / "defaults" / "policy.yaml"
    assert packaged.read_bytes() == (REPO / "policies" / "default.yaml").read_bytes()


def test_default_policy_keeps_its_budget():
    b = load_policy(REPO / "policies" / "default.yaml").policy.budget
    assert (b.epsilon_per_block, b.delta, b.accountant) == (8.0, 1e-5, "pld")


def test_default_policy_file_states_the_schema_defaults():
    from dpgov.policy import Policy

    loaded = load_policy(REPO / "policies" / "default.yaml").policy
    assert loaded == Policy.model_validate(yaml.safe_load(MINIMAL))


def test_strict_policy_loads_and_is_stricter():
    strict = load_policy(REPO / "policies" / "strict.yaml").policy
    default = load_policy(REPO / "policies" / "default.yaml").policy
    assert strict.release_max_epsilon() < default.release_max_epsilon()
    assert strict.approvals.required > default.approvals.required
    assert strict.release.require_secure_rng


def test_policy_with_only_version_and_budget_loads_with_defaults(tmp_path):
    p = load_policy(write(tmp_path, MINIMAL)).policy
    assert p.release.alias == "champion"
    assert p.release_max_epsilon() == 8.0 and p.release_max_delta() == 1e-5
    assert p.approvals.required == 1 and p.approvals.approvers is None
    assert p.fairness.sensitive_attributes == ["sex", "age_band"]


def test_readme_explains_every_key():
    from dpgov.policy import Policy

    readme = (REPO / "policies" / "README.md").read_text()
    for section, model in Policy.model_fields.items():
        assert f"`{section}`" in readme
        sub = model.annotation
        for key in getattr(sub, "model_fields", {}):
            assert f"`{key}`" in readme, f"{section}.{key} not explained"


def test_unknown_key_is_rejected_by_name(tmp_path):
    msg = rejected(with_section(tmp_path, "fairness", {"max_gap": 0.1}))
    assert "fairness.max_gap: unknown key" in msg


def test_unknown_section_is_rejected(tmp_path):
    assert "releases: unknown key" in rejected(with_section(tmp_path, "releases", {}))


def test_threshold_above_one_is_rejected(tmp_path):
    msg = rejected(with_section(tmp_path, "utility", {"min_auroc": 1.5}))
    assert "utility.min_auroc" in msg and "1.5" in msg


def test_negative_threshold_is_rejected(tmp_path):
    assert "fairness.max_fnr_gap" in rejected(
        with_section(tmp_path, "fairness", {"max_fnr_gap": -0.1})
    )


def test_negative_release_epsilon_is_rejected(tmp_path):
    assert "release.max_epsilon" in rejected(
        with_section(tmp_path, "release", {"max_epsilon": -1.0})
    )


def test_negative_budget_is_rejected(tmp_path):
    msg = rejected(write(tmp_path, MINIMAL.replace("8.0", "-8.0")))
    assert "budget.epsilon_per_block" in msg


def test_wrong_type_is_rejected(tmp_path):
    msg = rejected(with_section(tmp_path, "approvals", {"required": "two"}))
    assert "approvals.required" in msg and "'two'" in msg


def test_boolean_is_not_a_number(tmp_path):
    assert "utility.min_auroc" in rejected(with_section(tmp_path, "utility", {"min_auroc": True}))


def test_nan_threshold_is_rejected(tmp_path):
    assert "fairness.max_auroc_gap" in rejected(
        write(tmp_path, MINIMAL + "fairness: {max_auroc_gap: .nan}\n")
    )


def test_version_true_is_rejected(tmp_path):
    assert "version" in rejected(write(tmp_path, MINIMAL.replace("version: 1", "version: true")))


def test_version_two_is_rejected(tmp_path):
    assert "version" in rejected(write(tmp_path, MINIMAL.replace("version: 1", "version: 2")))


def test_missing_budget_is_named(tmp_path):
    assert "budget: required key is missing" in rejected(write(tmp_path, "version: 1\n"))


def test_fewer_approvers_than_required_is_rejected(tmp_path):
    msg = rejected(with_section(tmp_path, "approvals", {"required": 2, "approvers": ["a"]}))
    assert "no release could ever be approved" in msg


def test_repeated_approver_is_rejected(tmp_path):
    assert "must not repeat" in rejected(
        with_section(tmp_path, "approvals", {"approvers": ["Ann", "ann"]})
    )


def test_alias_that_looks_like_a_version_is_rejected(tmp_path):
    assert "release.alias" in rejected(with_section(tmp_path, "release", {"alias": "v3"}))


def test_alias_latest_is_rejected(tmp_path):
    assert "release.alias" in rejected(with_section(tmp_path, "release", {"alias": "latest"}))


def test_zero_min_group_size_is_rejected(tmp_path):
    assert "fairness.min_group_size" in rejected(
        with_section(tmp_path, "fairness", {"min_group_size": 0})
    )


def test_repeated_sensitive_attribute_is_rejected(tmp_path):
    assert "must not repeat" in rejected(
        with_section(tmp_path, "fairness", {"sensitive_attributes": ["sex", "sex"]})
    )


def test_unknown_judge_on_is_rejected(tmp_path):
    assert "fairness.judge_on" in rejected(with_section(tmp_path, "fairness", {"judge_on": "mean"}))


def test_several_problems_are_counted(tmp_path):
    msg = rejected(with_section(tmp_path, "utility", {"min_auroc": 2, "max_calibration_error": 2}))
    assert "(and 1 more problem)" in msg


def test_missing_file_is_one_line(tmp_path):
    assert "cannot read" in rejected(tmp_path / "absent.yaml")


def test_top_level_list_is_rejected(tmp_path):
    assert "expected a mapping" in rejected(write(tmp_path, "- 1\n- 2\n"))


def test_approver_identities_follow_the_name_rule_and_name_listed_approvers(tmp_path):
    msg = rejected(with_section(tmp_path, "approvals", {"identities": {"alice": "Alice\u200b"}}))
    assert "approvals.identities" in msg and "ZERO WIDTH SPACE" in msg
    listed = {"approvers": ["alice"], "identities": {"carol": "carol.diaz"}}
    assert "'carol' is mapped but is not in approvals.approvers" in rejected(
        with_section(tmp_path, "approvals", listed)
    )
    ok = with_section(tmp_path, "approvals", {"identities": {"alice": "alice.smith"}})
    assert load_policy(ok).policy.approvals.identity_of("alice") == "alice.smith"
