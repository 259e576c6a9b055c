"""The registry: a model name resolves to one entry, this run's stage or any run's `RUN_ID:stage`."""

import pytest

from tunebook import registry


def test_a_name_is_this_runs_stage_or_any_runs_run_id_colon_stage():
    registry.register("a", "sft", {"base_model": "tiny", "adapter": "a/adapter"})
    registry.register("b", "sft", {"base_model": "tiny", "adapter": "b/adapter"})
    assert registry.entry("sft", "a")["adapter"] == "a/adapter"
    assert registry.entry("b:sft", "a")["adapter"] == "b/adapter"
    assert registry.resolve("b:sft", "a")["adapter"] == "b/adapter"


def test_an_unknown_name_is_refused_naming_the_known_ones():
    registry.register("a", "sft", {"base_model": "tiny", "adapter": "a/adapter"})
    with pytest.raises(registry.RegistryError, match=r"no model named 'dpo' in .*registry.json \(known: a:sft\)"):
        registry.entry("dpo", "a")
    with pytest.raises(registry.RegistryError, match=r"no model named 'b:sft'"):
        registry.resolve("b:sft", "a")
