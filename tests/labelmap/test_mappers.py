"""Label mappers (seed 000 ch. 6): OTLM optimum, FLM greedy, ILM refresh, transform, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from madapt import registry
from madapt.errors import ConfigError, DataError
from madapt.labelmap import FLM, ILM, OTLM, CostAccumulator, HardCoded, Identity, RandomMap, mapper_config


def random_probs(n: int, n_source: int, n_target: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(2 * torch.randn(n, n_source, generator=g, dtype=torch.float64), dim=1)
    return probs, torch.randint(0, n_target, (n,), generator=g)


def naive_cost(probs: torch.Tensor, labels: torch.Tensor, n_target: int) -> np.ndarray:
    f, y = probs.numpy(), labels.numpy()
    return np.array(
        [[1 - f[y == j, i].sum() / f[:, i].sum() for j in range(n_target)] for i in range(f.shape[1])]
    )


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_source", [5, 6])
def test_otlm_mapping_is_the_brute_force_optimum(seed, n_source):
    probs, labels = random_probs(60, n_source, 3, seed)
    cost = naive_cost(probs, labels, 3)
    best = min(
        itertools.permutations(range(n_source), 3),
        key=lambda perm: sum(cost[s, j] for j, s in enumerate(perm)),
    )
    mapper = OTLM().fit(probs, labels)
    assert tuple(mapper.mapping_.tolist()) == best
    assert mapper.mapping_cost_ == pytest.approx(sum(cost[s, j] for j, s in enumerate(best)), abs=1e-12)


def peaked_probs(argmax_per_target: list[list[int]], n_source: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax rows peaking at the given source classes, with their target labels."""
    peaks = [s for group in argmax_per_target for s in group]
    labels = [j for j, group in enumerate(argmax_per_target) for _ in group]
    logits = 5.0 * torch.nn.functional.one_hot(torch.tensor(peaks), n_source).double()
    return torch.softmax(logits, dim=1), torch.tensor(labels)


def test_flm_reproduces_a_hand_worked_greedy_example():
    # Argmax source class of each training sample, per target class:
    #   target 0: 1 1 1 2     target 1: 1 1 1 1 0     target 2: 2 2 3
    # Frequency matrix A (rows source, columns target):
    #   src0 [0 1 0] / src1 [3 4 0] / src2 [1 0 2] / src3 [0 0 1]
    # Greedy: 4 at (src1, t1) -> t1 = 1; drop row 1, column 1. Then 2 at (src2, t2) -> t2 = 2.
    # Column t0 is left with src0 = 0 and src3 = 0: a tie, won by the lowest flat index, src0.
    probs, labels = peaked_probs([[1, 1, 1, 2], [1, 1, 1, 1, 0], [2, 2, 3]], n_source=4)
    mapper = FLM().fit(probs, labels)
    np.testing.assert_array_equal(mapper.mapping_, [0, 1, 2])
    # Even though source 1 is target 0's most frequent class, it went to target 1 first.
    assert mapper.cost_.shape == (4, 3)
    assert mapper.cost_[1, 0] == 1.0 and mapper.cost_[1, 1] == 0.0  # C_f = max(A) - A


def test_table_6_9_ablation_grid_orders_total_ot_cost():
    probs, labels = random_probs(400, 40, 12, seed=11)
    cost_matrix = naive_cost(probs, labels, 12)
    ot_costs = {}
    for solver in ("greedy", "lsa"):
        for cost in ("frequency", "ot"):
            mapper = OTLM(solver=solver, cost=cost).fit(probs, labels)
            assert len(set(mapper.mapping_.tolist())) == 12
            ot_costs[solver, cost] = float(cost_matrix[mapper.mapping_, np.arange(12)].sum())
    # The exact solver on the OT cost is optimal for the OT objective; the others can only tie or lose.
    assert ot_costs["lsa", "ot"] == min(ot_costs.values())
    assert ot_costs["lsa", "ot"] < ot_costs["greedy", "frequency"]
    # greedy/frequency is exactly ILM.
    np.testing.assert_array_equal(
        OTLM(solver="greedy", cost="frequency").fit(probs, labels).mapping_, ILM().fit(probs, labels).mapping_
    )


@pytest.mark.parametrize("mapper_cls", [FLM, ILM, OTLM])
def test_fit_from_streamed_batches_equals_fit_in_memory(mapper_cls):
    probs, labels = random_probs(203, 30, 8, seed=12)
    in_memory = mapper_cls().fit(probs, labels)
    acc = CostAccumulator(30, 8)
    for start, stop in [(0, 3), (3, 100), (100, 101), (101, 203)]:
        acc.update(probs[start:stop], labels[start:stop])
    streamed = mapper_cls().fit_from_stats(acc)
    np.testing.assert_array_equal(streamed.mapping_, in_memory.mapping_)
    np.testing.assert_allclose(streamed.cost_, in_memory.cost_, rtol=1e-12)


def test_transform_gives_one_column_per_target_in_target_order():
    probs, labels = random_probs(100, 20, 6, seed=13)
    mapper = OTLM().fit(probs, labels)
    logits = torch.randn(5, 20, requires_grad=True)
    out = mapper.transform(logits)
    assert out.shape == (5, 6)
    for j, source in enumerate(mapper.mapping_):
        torch.testing.assert_close(out[:, j], logits[:, source])
    # Only the mapped source columns receive gradient.
    out.sum().backward()
    touched = (logits.grad != 0).any(dim=0).nonzero().flatten().tolist()
    assert sorted(touched) == sorted(mapper.mapping_.tolist())
    # Leading dimensions are kept.
    assert mapper.transform(torch.randn(2, 3, 20)).shape == (2, 3, 6)


def test_refresh_schedule_follows_mapping_interval():
    probs, labels = random_probs(50, 10, 4, seed=14)
    flm, ilm, otlm_once = FLM(), ILM(mapping_interval=2), OTLM(mapping_interval=None)
    for mapper in (flm, ilm, otlm_once):
        assert mapper.needs_refresh(0) and mapper.needs_refresh(3)  # not fitted yet
        mapper.fit(probs, labels)
    assert [ilm.needs_refresh(e) for e in range(5)] == [True, False, True, False, True]
    assert not any(flm.needs_refresh(e) for e in range(5))
    assert not any(otlm_once.needs_refresh(e) for e in range(5))
    assert OTLM().mapping_interval == 1 and FLM().mapping_interval is None


def test_random_map_is_injective_and_seeded():
    probs, labels = random_probs(30, 1000, 100, seed=15)
    a = RandomMap(seed=1).fit(probs, labels, n_target=100).mapping_
    b = RandomMap(seed=1).fit_shape(1000, 100).mapping_
    c = RandomMap(seed=2).fit_shape(1000, 100).mapping_
    assert len(set(a.tolist())) == 100 and a.min() >= 0 and a.max() < 1000
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not RandomMap().requires_data


def test_hardcoded_maps_target_i_to_source_i():
    mapper = HardCoded().fit_shape(n_source=10, n_target=4)
    np.testing.assert_array_equal(mapper.mapping_, [0, 1, 2, 3])
    logits = torch.arange(20.0).reshape(2, 10)
    torch.testing.assert_close(mapper.transform(logits), logits[:, :4])


def test_registry_builds_every_mapper_with_options():
    assert {"hardcoded", "random", "flm", "ilm", "otlm"} <= set(registry.names("mapper"))
    mapper = registry.build("mapper", "otlm", solver="emd", cost="frequency", mapping_interval=5)
    assert isinstance(mapper, OTLM)
    assert (mapper.solver, mapper.cost, mapper.mapping_interval) == ("emd", "frequency", 5)
    assert isinstance(registry.build("mapper", "random", seed=3), RandomMap)


def test_state_dict_round_trip_restores_the_mapping():
    probs, labels = random_probs(80, 12, 5, seed=16)
    fitted = OTLM().fit(probs, labels)
    restored = OTLM()
    restored.load_state_dict(fitted.state_dict())
    np.testing.assert_array_equal(restored.mapping_, fitted.mapping_)
    logits = torch.randn(3, 12)
    torch.testing.assert_close(restored.transform(logits), fitted.transform(logits))
    with pytest.raises(ConfigError, match="saved by mapper 'otlm'"):
        FLM().load_state_dict(fitted.state_dict())


def test_more_target_than_source_classes_is_a_config_error():
    probs, labels = random_probs(20, 3, 3, seed=17)
    with pytest.raises(ConfigError, match="5 target classes but only 3 source classes"):
        OTLM().fit(probs, labels, n_target=5)
    with pytest.raises(ConfigError, match="n_target <= n_source"):
        HardCoded().fit_shape(3, 4)


def test_bad_inputs_are_data_errors():
    probs, labels = random_probs(20, 6, 3, seed=18)
    with pytest.raises(DataError, match="softmax"):
        OTLM().fit(torch.log(probs), labels)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        OTLM().fit(probs, labels, n_target=2)  # labels go up to 2
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        HardCoded().fit(probs, labels, n_target=2)
    with pytest.raises(DataError, match="2-D"):
        FLM().fit(probs[0], labels[:1])
    mapper = OTLM().fit(probs, labels)
    with pytest.raises(DataError, match="last dimension 6"):
        mapper.transform(torch.randn(4, 7))
    with pytest.raises(RuntimeError, match="before fit"):
        OTLM().transform(torch.randn(4, 6))


def test_bad_options_are_config_errors_naming_the_closest_option():
    with pytest.raises(ConfigError, match="did you mean 'frequency'"):
        OTLM(cost="frequncy")
    with pytest.raises(ConfigError, match="'lsa', 'greedy', 'emd' or 'partial'"):
        OTLM(solver="hungarian")
    with pytest.raises(ConfigError, match="mapping_interval"):
        ILM(mapping_interval=0)
    with pytest.raises(ConfigError, match=r"variants\.0\.options\.solvr.*did you mean 'solver'"):
        mapper_config("otlm", {"solvr": "lsa"}, "variants.0.options")
    with pytest.raises(ConfigError, match="options: sources_per_class"):
        mapper_config("flm", {"solver": "lsa"}, "variants.0.options")  # FLM's solver is fixed
    config = mapper_config("otlm", {"solver": "greedy"}, "here")
    assert mapper_config("otlm", config, "here") is config  # validated once, passed on as is
    assert OTLM(config).solver == "greedy"
    with pytest.raises(ConfigError, match="both"):
        OTLM(config, cost="ot")


def test_random_map_draws_from_the_run_seed_unless_its_config_fixes_one():
    a = RandomMap(run_seed=4).fit_shape(50, 5).mapping_
    np.testing.assert_array_equal(a, RandomMap(run_seed=4).fit_shape(50, 5).mapping_)
    assert not np.array_equal(a, RandomMap(run_seed=5).fit_shape(50, 5).mapping_)
    fixed = [RandomMap(seed=9, run_seed=r).fit_shape(50, 5).mapping_ for r in (4, 5)]
    np.testing.assert_array_equal(*fixed)


def test_identity_passes_logits_through_and_needs_a_head_per_target():
    mapper = Identity().fit_shape(4, 4)
    logits = torch.randn(3, 4)
    assert mapper.transform(logits) is logits and mapper.describe(["a"] * 4) == {}
    with pytest.raises(ConfigError, match="one output per target class"):
        Identity().fit_shape(5, 4)


@pytest.mark.parametrize("mapper_cls", [FLM, OTLM])
def test_several_sources_per_class_average_their_logits(mapper_cls):
    probs, labels = random_probs(200, 30, 4, seed=21)
    mapper = mapper_cls(sources_per_class=3).fit(probs, labels)
    assert mapper.mapping_.shape == (4, 3) and len(set(mapper.mapping_.ravel().tolist())) == 12
    logits = torch.randn(5, 30)
    expected = torch.stack([logits[:, row].mean(1) for row in torch.as_tensor(mapper.mapping_)], dim=1)
    torch.testing.assert_close(mapper.transform(logits), expected)
    assert len(mapper.describe([f"s{i}" for i in range(30)])["mapped_names"][0].split(" + ")) == 3
    with pytest.raises(ConfigError, match="n_target \\* sources_per_class"):
        mapper_cls(sources_per_class=8).fit(probs, labels)


def test_multi_source_otlm_is_the_brute_force_optimum():
    probs, labels = random_probs(60, 6, 2, seed=22)
    cost = naive_cost(probs, labels, 2)
    best = min(
        (p for p in itertools.permutations(range(6), 4) if p[0] < p[1] and p[2] < p[3]),
        key=lambda p: cost[p[0], 0] + cost[p[1], 0] + cost[p[2], 1] + cost[p[3], 1],
    )
    mapper = OTLM(sources_per_class=2).fit(probs, labels)
    assert {frozenset(row) for row in mapper.mapping_.tolist()} == {frozenset(best[:2]), frozenset(best[2:])}
    assert mapper.mapping_cost_ == pytest.approx(
        cost[best[0], 0] + cost[best[1], 0] + cost[best[2], 1] + cost[best[3], 1], abs=1e-12
    )


def test_accumulator_from_a_mapper_gathers_what_it_needs():
    probs, labels = random_probs(90, 15, 4, seed=19)
    cases = [(OTLM, {}, False), (FLM, {}, True), (OTLM, {"cost": "frequency"}, True)]
    for cls, options, has_counts in cases:
        acc = cls(**options).make_accumulator(15, 4)
        acc.update(probs, labels)
        assert (acc.stats().counts is not None) == has_counts
        np.testing.assert_array_equal(
            cls(**options).fit_from_stats(acc).mapping_, cls(**options).fit(probs, labels).mapping_
        )
    no_counts = OTLM().make_accumulator(15, 4)
    no_counts.update(probs, labels)
    with pytest.raises(ConfigError, match="counts=True"):
        FLM().fit_from_stats(no_counts)
