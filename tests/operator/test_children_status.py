"""Pure builders and status rebuilding: shapes checked without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from elastiserve_operator.children import (
    RUN_AS,
    Owner,
    build_children,
    build_deployment,
    level_names,
    names_for,
)
from elastiserve_operator.observation import Observation
from elastiserve_operator.policy import decide
from elastiserve_operator.policy_state import PolicyState
from elastiserve_operator.settings import (
    DEFAULTS_ENV,
    ENV,
    OperatorSettings,
    defaults_from_env,
    settings_from_env,
)
from elastiserve_operator.spec import (
    CHART_DEFAULTED,
    ServingDefaults,
    SpecDefaults,
    SpecError,
    parse_spec,
)
from elastiserve_operator.status import (
    RECONCILE_OPTIONAL,
    effective_policy,
    evaluation_patch,
    readiness_drifted,
    ready_count,
    reconcile_patch,
    restore_state,
    status_holds,
)

OWNER = Owner(name="resnet", namespace="ml", uid="u-1")


def spec(**extra: Any) -> dict[str, Any]:
    return {
        "model": {"levelCount": 3, "source": {"pvc": {"claimName": "models", "path": "r.mar"}}},
        "objective": {"p95Ms": 100},
        **extra,
    }


class TestChildren:
    def test_names_are_deterministic_and_short(self) -> None:
        assert names_for("resnet") == names_for("resnet")
        long = names_for("x" * 200)
        assert all(len(n) <= 63 for n in vars(long).values())
        assert long.deployment != long.service

    def test_every_child_is_owned_by_the_model(self) -> None:
        for child in build_children(OWNER, parse_spec(spec()), OperatorSettings()):
            (ref,) = child["metadata"]["ownerReferences"]
            assert ref["uid"] == "u-1" and ref["controller"] and ref["kind"] == "ElasticModel"
            assert child["metadata"]["namespace"] == "ml"

    def test_pod_is_restricted_and_only_the_agent_holds_a_token(self) -> None:
        s = parse_spec(spec(serving={"nodeSelector": {"kubernetes.io/arch": "arm64"},
                                     "runtimeClassName": "nvidia",
                                     "resources": {"limits": {"memory": "1Gi"}}}))
        deployment = build_children(OWNER, s, OperatorSettings())[-1]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
        assert pod["runtimeClassName"] == "nvidia"
        serving, agent = pod["containers"]
        assert serving["resources"] == {"limits": {"memory": "1Gi"}}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
        assert "agent-token" in {m["name"] for m in agent["volumeMounts"]}
        assert "agent-token" not in {m["name"] for m in serving["volumeMounts"]}
        control = next(v for v in pod["volumes"] if v["name"] == "control")
        assert control["emptyDir"]["medium"] == "Memory"
        # The level never appears in the pod template: a switch must not roll the pods.
        assert "activeLevel" not in str(deployment)

    def test_pod_runs_as_the_images_user_with_read_only_roots(self) -> None:
        pod = build_deployment(OWNER, parse_spec(spec()), OperatorSettings())
        template = pod["spec"]["template"]["spec"]
        assert RUN_AS == 65532
        context = template["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (
            65532, 65532, 65532)
        serving = template["containers"][0]
        assert serving["securityContext"]["readOnlyRootFilesystem"] is True
        # What TorchServe, its JVM and torch write goes to the tmp emptyDir, HOME included.
        assert {"name": "HOME", "value": "/tmp"} in serving["env"]
        tmp = next(m for m in serving["volumeMounts"] if m["mountPath"] == "/tmp")
        assert {"name": tmp["name"], "emptyDir": {}} in template["volumes"]
        url = parse_spec(spec(model={"levelCount": 3, "source": {"url": {
            "url": "https://example.com/m.mar", "sha256": "a" * 64}}}))
        init = build_deployment(OWNER, url, OperatorSettings())["spec"]["template"]["spec"]
        for container in [*template["containers"], *init["initContainers"]]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True

    def test_level_names_default_to_bundle_names(self) -> None:
        assert level_names(parse_spec(spec())) == ("L0", "L1", "L2")
        named = spec()
        named["model"]["profile"] = [{"name": n, "serviceTimeMs": 5} for n in ("a", "b", "c")]
        assert level_names(parse_spec(named)) == ("a", "b", "c")


def serving_args(deployment: dict[str, Any]) -> dict[str, str]:
    """The serving container's ``--flag value`` pairs (valueless flags map to "")."""
    args = [str(a) for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]]
    out: dict[str, str] = {}
    for index, arg in enumerate(args):
        if arg.startswith("--"):
            following = args[index + 1] if index + 1 < len(args) else "--"
            out[arg] = "" if following.startswith("--") else following
    return out


CHART = settings_from_env({
    "ELASTISERVE_SERVING_WORKERS": "3",
    "ELASTISERVE_SERVING_BATCH_SIZE": "16",
    "ELASTISERVE_SERVING_MAX_BATCH_DELAY_MS": "20",
    "ELASTISERVE_SERVING_RESOURCES": '{"requests": {"cpu": "500m", "memory": "1Gi"}, '
                                     '"limits": {"memory": "2Gi"}}',
    "ELASTISERVE_SERVING_NODE_SELECTOR": '{"pool": "edge"}',
    "ELASTISERVE_SERVING_TOLERATIONS": '[{"key": "pool", "operator": "Equal", '
                                       '"value": "edge", "effect": "NoSchedule"}]',
    "ELASTISERVE_SERVING_RUNTIME_CLASS": "nvidia",
    "ELASTISERVE_SERVING_IMAGE_PULL_POLICY": "Always",
})


class TestServingSettingsReachThePods:
    """The CR's spec.serving, else the chart's serving.* values, in the pod and its args."""

    def build(self, raw: dict[str, Any], settings: OperatorSettings = CHART) -> dict[str, Any]:
        return build_deployment(OWNER, parse_spec(raw, settings.spec_defaults), settings)

    def test_chart_defaults_fill_what_the_cr_leaves_out(self) -> None:
        deployment = self.build(spec())
        args = serving_args(deployment)
        assert (args["--workers"], args["--batch-size"], args["--max-batch-delay-ms"]) == (
            "3", "16", "20")
        assert "--no-allow-pin" in args
        pod = deployment["spec"]["template"]["spec"]
        serving = pod["containers"][0]
        assert serving["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                        "limits": {"memory": "2Gi"}}
        assert pod["nodeSelector"] == {"pool": "edge"}
        assert pod["tolerations"][0]["key"] == "pool"
        assert pod["runtimeClassName"] == "nvidia"
        images = [*pod["containers"], *pod["initContainers"]]
        assert {c["imagePullPolicy"] for c in images} == {"Always"}

    def test_the_crs_fields_win_each_as_a_whole(self) -> None:
        raw = spec(allowRequestPinning=True, serving={
            "workers": 2, "batchSize": 4, "maxBatchDelayMs": 5,
            "resources": {"limits": {"nvidia.com/gpu": 1}},
            "nodeSelector": {"kubernetes.io/arch": "amd64"}, "tolerations": [],
            "runtimeClassName": "runc"})
        deployment = self.build(raw)
        args = serving_args(deployment)
        assert (args["--workers"], args["--batch-size"], args["--max-batch-delay-ms"]) == (
            "2", "4", "5")
        assert "--allow-pin" in args and "--no-allow-pin" not in args
        pod = deployment["spec"]["template"]["spec"]
        assert pod["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
        assert pod["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
        assert "tolerations" not in pod  # an explicit empty list clears the chart's
        assert pod["runtimeClassName"] == "runc"

    def test_without_the_chart_nothing_is_imposed(self) -> None:
        deployment = self.build(spec(), OperatorSettings())
        args = serving_args(deployment)
        assert (args["--workers"], args["--batch-size"], args["--max-batch-delay-ms"]) == (
            "1", "1", "10")
        pod = deployment["spec"]["template"]["spec"]
        assert "resources" not in pod["containers"][0]
        assert not {"nodeSelector", "tolerations", "runtimeClassName"} & set(pod)
        assert pod["containers"][0]["imagePullPolicy"] == "IfNotPresent"

    def test_auto_batch_size_asks_the_pod_to_plan_against_the_objective(self) -> None:
        """``batchSize: Auto``: the pod measures its node for the batch size and threads
        (``elastiserve serve --batch-size auto --threads auto``) against the CR's objective."""
        args = serving_args(self.build(spec(serving={"batchSize": "Auto"})))
        assert (args["--batch-size"], args["--threads"], args["--objective-ms"]) == (
            "auto", "auto", "100")
        fixed = serving_args(self.build(spec()))
        assert "--threads" not in fixed and "--objective-ms" not in fixed
        # The chart's default can be Auto too (a CR that sets a number still wins).
        chart_auto = settings_from_env({"ELASTISERVE_SERVING_BATCH_SIZE": "Auto"})
        assert serving_args(self.build(spec(), chart_auto))["--batch-size"] == "auto"
        assert serving_args(self.build(spec(serving={"batchSize": 4}), chart_auto))[
            "--batch-size"] == "4"
        model = parse_spec(spec(serving={"batchSize": "Auto"}), CHART.spec_defaults)
        assert effective_policy(model)["serving"]["batchSize"] == "Auto"

    def test_auto_batch_size_args_are_accepted_by_the_serving_cli(self) -> None:
        from elastiserve.cli import parser_for

        argv = [str(a) for a in self.build(spec(serving={"batchSize": "Auto"}))[
            "spec"]["template"]["spec"]["containers"][0]["args"]]
        parsed = parser_for(argv).parse_args(argv)
        assert (parsed.batch_size, parsed.threads, parsed.objective_ms) == ("auto", "auto", 100)

    def test_the_configmap_and_status_say_what_the_pods_run_with(self) -> None:
        model = parse_spec(spec(serving={"batchSize": 2}), CHART.spec_defaults)
        children = {c["kind"]: c for c in build_children(OWNER, model, CHART)}
        import json

        config = json.loads(children["ConfigMap"]["data"]["serving.json"])
        assert (config["workers"], config["batchSize"], config["maxBatchDelayMs"]) == (3, 2, 20)
        effective = effective_policy(model)
        assert effective["serving"] == {"workers": 3, "batchSize": 2, "maxBatchDelayMs": 20}
        assert effective["sources"]["serving.batchSize"] == "spec"
        assert effective["sources"]["serving.workers"] == "chartDefault"
        assert effective["sources"]["serving.resources"] == "chartDefault"

    def test_a_default_delay_that_breaks_the_crs_objective_is_refused_naming_it(self) -> None:
        with pytest.raises(SpecError, match=r"serving.maxBatchDelayMs=20 from the operator"):
            parse_spec(spec(objective={"p95Ms": 15}), CHART.spec_defaults)


class TestStatus:
    def test_invalid_spec_is_degraded_with_generation(self) -> None:
        patch = reconcile_patch({}, 7, None, None, "spec.x: bad", 1000.0)
        conditions = {c["type"]: c for c in patch["conditions"]}
        assert conditions["Degraded"]["status"] == "True"
        assert conditions["Degraded"]["reason"] == "InvalidSpec"
        assert conditions["Degraded"]["observedGeneration"] == 7
        assert patch["observedGeneration"] == 7

    def test_transition_time_moves_only_with_status(self) -> None:
        s = parse_spec(spec())
        ready = {"status": {"readyReplicas": 1}}
        first = reconcile_patch({}, 1, s, ready, None, 1000.0)
        again = reconcile_patch({"conditions": first["conditions"]}, 2, s, ready, None, 2000.0)
        assert [c["lastTransitionTime"] for c in again["conditions"]] == [
            c["lastTransitionTime"] for c in first["conditions"]
        ]
        lost = reconcile_patch({"conditions": first["conditions"]}, 2, s, None, None, 3000.0)
        by_type = {c["type"]: c for c in lost["conditions"]}
        assert by_type["Ready"]["status"] == "False"
        assert by_type["Ready"]["lastTransitionTime"] == "1970-01-01T00:50:00Z"

    def test_readiness_drift_is_a_disagreement_with_the_deployment(self) -> None:
        two = parse_spec(spec(replicas=2))
        deployment = {"status": {"readyReplicas": 2}}
        assert not readiness_drifted({"readyReplicas": 2}, two, deployment, 1)
        assert readiness_drifted({"readyReplicas": 1}, two, deployment, 1)
        assert readiness_drifted({"readyReplicas": 2}, two, {"status": {}}, 1)
        # Nothing reported yet: the reconcile's first write owns it, not a correction.
        assert not readiness_drifted({}, two, deployment, 1)
        # Scaled to zero reports 0 ready whatever the old pods still say.
        zero = parse_spec(spec(replicas=0))
        assert not readiness_drifted({"readyReplicas": 0}, zero, deployment, 1)
        assert ready_count({"status": {}}) == 0 and ready_count(deployment) == 2

    def test_missing_metrics_hold_and_drop_readings(self) -> None:
        s = parse_spec(spec())
        state = restore_state({"activeLevel": 1}, s, 100.0)
        assert state.level == 1
        decision = decide(Observation(None, None, None), s, (), state, 100.0)
        patch = evaluation_patch({"lastSwitchTime": "t", "lastSwitchReason": "r"}, 3, decision,
                                 Observation(None, None, None), ["latency: down"], 100.0)
        assert patch["activeLevel"] == 1 and "p95Ms" not in patch
        (cond,) = patch["conditions"]
        assert cond["status"] == "False" and "latency: down" in cond["message"]
        assert patch["lastSwitchReason"] == "r"

    def test_state_round_trips_through_status(self) -> None:
        s = parse_spec(spec())
        state = PolicyState.initial(2, 50.0)
        assert restore_state({"policyState": state.to_dict()}, s, 60.0) == state
        assert restore_state({"policyState": {"version": 99}}, s, 60.0).level == 2


class TestEffectivePolicy:
    def test_values_and_where_each_came_from(self) -> None:
        raw = spec(policy={"stableWindowSeconds": 90})
        del raw["objective"]
        settings = settings_from_env({"ELASTISERVE_DEFAULT_OBJECTIVE_P95_MS": "123"})
        effective = effective_policy(parse_spec(raw, settings.spec_defaults))
        assert effective["objective"]["p95Ms"] == 123
        assert effective["objective"]["latencyQuery"] == settings.latency_query
        assert effective["policy"]["stableWindowSeconds"] == 90
        assert effective["policy"]["mode"] == "Predictive"
        assert effective["nodePressure"]["cpuFraction"] == 0.9
        sources = effective["sources"]
        assert set(sources) == set(CHART_DEFAULTED)
        assert sources["policy.stableWindowSeconds"] == "spec"
        assert effective["serving"] == {"workers": 1, "batchSize": 1, "maxBatchDelayMs": 10}
        assert {v for k, v in sources.items() if k != "policy.stableWindowSeconds"} == {
            "chartDefault"}

    def test_reconcile_writes_it_and_an_invalid_spec_removes_it(self) -> None:
        patch = reconcile_patch({}, 1, parse_spec(spec()), None, None, 1000.0)
        assert patch["effectivePolicy"]["objective"]["p95Ms"] == 100
        assert patch["effectivePolicy"]["sources"]["objective.p95Ms"] == "spec"
        # Local mode passes no queries: the status then names none rather than a wrong one.
        assert "latencyQuery" not in patch["effectivePolicy"]["objective"]
        invalid = reconcile_patch(patch, 2, None, None, "spec.x: bad", 2000.0)
        assert "effectivePolicy" not in invalid
        assert not status_holds(patch, invalid, RECONCILE_OPTIONAL)


class TestNoOpWrites:
    """A status write is skipped only when it would change nothing (``status_holds``)."""

    def evaluated(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """A status written by both managers, and the policy's next (holding) patch."""
        s = parse_spec(spec())
        reconciled = reconcile_patch({}, 1, s, None, None, 1000.0)
        state = restore_state({"activeLevel": 2}, s, 1000.0)
        decision = decide(Observation(None, None, None), s, (), state, 1000.0)
        first = evaluation_patch(reconciled, 1, decision, Observation(None, None, None),
                                 [], 1000.0)
        status = {**reconciled, **first,
                  "conditions": reconciled["conditions"] + first["conditions"]}
        again = evaluation_patch(status, 1, decision, Observation(None, None, None), [], 1005.0)
        return status, again

    def test_a_steady_hold_writes_nothing_despite_the_other_managers_conditions(
        self,
    ) -> None:
        status, again = self.evaluated()
        assert len(status["conditions"]) == 4 and len(again["conditions"]) == 1
        assert status_holds(status, again, ("p95Ms",))

    def test_a_changed_condition_or_field_is_written(self) -> None:
        status, again = self.evaluated()
        moved = dict(again, conditions=[dict(again["conditions"][0], message="other")])
        assert not status_holds(status, moved)
        assert not status_holds(status, dict(again, activeLevel=1))
        assert not status_holds(status, dict(again, conditions=[
            dict(again["conditions"][0], type="Brandnew")]))

    def test_a_field_to_remove_is_written(self) -> None:
        status, again = self.evaluated()
        assert not status_holds({**status, "p95Ms": 40.0}, again, ("p95Ms",))
        assert status_holds({**status, "p95Ms": 40.0}, again)  # not ours to remove

    def test_a_resumed_unchanged_model_writes_nothing(self) -> None:
        s = parse_spec(spec())
        status = reconcile_patch({}, 4, s, None, None, 1000.0)
        assert status_holds(status, reconcile_patch(status, 4, s, None, None, 2000.0))
        assert not status_holds(status, reconcile_patch(status, 5, s, None, None, 2000.0))


class TestSettings:
    def test_env_overrides(self) -> None:
        got = settings_from_env({ENV["prometheus_url"]: "http://p:9090",
                                 ENV["namespaces"]: "a, b", ENV["metrics_port"]: "0"})
        assert got.prometheus_url == "http://p:9090"
        assert got.namespaces == ("a", "b") and got.metrics_port == 0

    def test_bad_values_fail_at_start(self) -> None:
        with pytest.raises(ValueError, match="ELASTISERVE"):
            settings_from_env({ENV["metrics_port"]: "eighty"})

    def test_ownership_retry(self) -> None:
        assert settings_from_env({}).ownership_retry_s == 60.0
        assert settings_from_env({ENV["ownership_retry"]: "5"}).ownership_retry_s == 5.0
        for bad in ("0", "7200", "soon"):
            with pytest.raises(ValueError, match="ELASTISERVE_OWNERSHIP_RETRY_SECONDS"):
                settings_from_env({ENV["ownership_retry"]: bad})

    def test_pull_policy(self) -> None:
        assert settings_from_env({}).serving_pull_policy == "IfNotPresent"
        assert settings_from_env({ENV["serving_pull_policy"]: "Never"}).serving_pull_policy == (
            "Never")
        with pytest.raises(ValueError, match=r"^ELASTISERVE_SERVING_IMAGE_PULL_POLICY: .*Always"):
            settings_from_env({ENV["serving_pull_policy"]: "Sometimes"})


class TestDefaultsFromEnv:
    """The chart's ``ELASTISERVE_DEFAULT_*`` values, parsed and checked at start."""

    def test_unset_means_the_builtin_defaults(self) -> None:
        assert defaults_from_env({}) == SpecDefaults()
        assert defaults_from_env({"ELASTISERVE_DEFAULT_TOLERANCE": ""}) == SpecDefaults()

    def test_every_variable_reaches_its_field(self) -> None:
        env = {
            "ELASTISERVE_DEFAULT_OBJECTIVE_P95_MS": "250",
            "ELASTISERVE_DEFAULT_POLICY_MODE": "Step",
            "ELASTISERVE_DEFAULT_EVALUATION_INTERVAL_SECONDS": "2",
            "ELASTISERVE_DEFAULT_STABLE_WINDOW_SECONDS": "90",
            "ELASTISERVE_DEFAULT_PANIC_WINDOW_SECONDS": "4",
            "ELASTISERVE_DEFAULT_PANIC_THRESHOLD": "3",
            "ELASTISERVE_DEFAULT_TOLERANCE": "0.05",
            "ELASTISERVE_DEFAULT_HEADROOM": "0.3",
            "ELASTISERVE_DEFAULT_WIDEN_STABILIZATION_SECONDS": "600",
            "ELASTISERVE_DEFAULT_SETTLE_SECONDS": "20",
            "ELASTISERVE_DEFAULT_STALE_AFTER_SECONDS": "30",
            "ELASTISERVE_DEFAULT_POD_START_SECONDS": "90",
            "ELASTISERVE_NODE_PRESSURE_CPU_FRACTION": "0.8",
            "ELASTISERVE_NODE_PRESSURE_MEMORY_FRACTION": "0.7",
            "ELASTISERVE_NODE_PRESSURE_TEMPERATURE_CELSIUS": "75",
            "ELASTISERVE_NODE_PRESSURE_GPU_LOAD_PERCENT": "90",
            "ELASTISERVE_SERVING_WORKERS": "2",
            "ELASTISERVE_SERVING_BATCH_SIZE": "8",
            "ELASTISERVE_SERVING_MAX_BATCH_DELAY_MS": "3",
            "ELASTISERVE_SERVING_RESOURCES": '{"requests": {"cpu": 2}}',
            "ELASTISERVE_SERVING_NODE_SELECTOR": '{"a": "b"}',
            "ELASTISERVE_SERVING_TOLERATIONS": '[{"operator": "Exists"}]',
            "ELASTISERVE_SERVING_RUNTIME_CLASS": " nvidia ",
        }
        assert set(env) == set(DEFAULTS_ENV)
        got = defaults_from_env(env)
        assert got.serving == ServingDefaults(
            workers=2, batch_size=8, max_batch_delay_ms=3, resources={"requests": {"cpu": "2"}},
            node_selector={"a": "b"}, tolerations=({"operator": "Exists"},),
            runtime_class_name="nvidia")
        p, n = got.policy, got.node_pressure
        assert got.objective_p95_ms == 250 and p.mode.value == "Step"
        assert (p.evaluation_interval_s, p.stable_window_s, p.panic_window_s) == (2, 90, 4)
        assert (p.panic_threshold, p.tolerance, p.headroom) == (3.0, 0.05, 0.3)
        assert (p.widen_stabilization_s, p.settle_s, p.stale_after_s) == (600, 20, 30)
        assert (n.cpu_fraction, n.memory_fraction) == (0.8, 0.7)
        assert (n.temperature_c, n.gpu_load_percent) == (75.0, 90.0)
        assert got.pod_start_s == 90  # policy.replicas.podStartSeconds

    @pytest.mark.parametrize("empty", ["{}", "[]", "null", " "])
    def test_an_empty_structured_value_means_no_default(self, empty: str) -> None:
        got = defaults_from_env({"ELASTISERVE_SERVING_RESOURCES": empty,
                                 "ELASTISERVE_SERVING_TOLERATIONS": empty,
                                 "ELASTISERVE_SERVING_NODE_SELECTOR": empty})
        assert got.serving == ServingDefaults()

    def test_helm_may_hand_an_integer_over_as_a_float(self) -> None:
        got = defaults_from_env({"ELASTISERVE_DEFAULT_OBJECTIVE_P95_MS": "123.0"})
        assert got.objective_p95_ms == 123

    @pytest.mark.parametrize(
        ("env", "names"),
        [
            ({"ELASTISERVE_DEFAULT_OBJECTIVE_P95_MS": "fast"}, "OBJECTIVE_P95_MS"),
            ({"ELASTISERVE_DEFAULT_OBJECTIVE_P95_MS": "0"}, "OBJECTIVE_P95_MS"),
            ({"ELASTISERVE_DEFAULT_STABLE_WINDOW_SECONDS": "7.5"}, "STABLE_WINDOW_SECONDS"),
            ({"ELASTISERVE_DEFAULT_POLICY_MODE": "Random"}, "POLICY_MODE"),
            ({"ELASTISERVE_DEFAULT_TOLERANCE": "0.9"}, "TOLERANCE"),
            ({"ELASTISERVE_DEFAULT_POD_START_SECONDS": "0"}, "POD_START_SECONDS"),
            ({"ELASTISERVE_DEFAULT_POD_START_SECONDS": "1.5"}, "POD_START_SECONDS"),
            ({"ELASTISERVE_NODE_PRESSURE_CPU_FRACTION": "1.5"}, "NODE_PRESSURE_CPU_FRACTION"),
            # Relations between defaults: the same rules as a CR's.
            ({"ELASTISERVE_DEFAULT_PANIC_WINDOW_SECONDS": "120"}, "PANIC_WINDOW_SECONDS"),
            ({"ELASTISERVE_DEFAULT_PANIC_THRESHOLD": "1.05"}, "PANIC_THRESHOLD"),
            # The serving pods' defaults: ranges, shapes, quantities, the delay's relation.
            ({"ELASTISERVE_SERVING_WORKERS": "0"}, "SERVING_WORKERS"),
            ({"ELASTISERVE_SERVING_BATCH_SIZE": "many"}, "SERVING_BATCH_SIZE"),
            ({"ELASTISERVE_SERVING_MAX_BATCH_DELAY_MS": "100"}, "SERVING_MAX_BATCH_DELAY_MS"),
            ({"ELASTISERVE_DEFAULT_OBJECTIVE_P95_MS": "5"}, "SERVING_MAX_BATCH_DELAY_MS"),
            ({"ELASTISERVE_SERVING_RESOURCES": "{cpu: 1}"}, "SERVING_RESOURCES"),
            ({"ELASTISERVE_SERVING_RESOURCES": '{"limits": {"memory": "lots"}}'},
             "SERVING_RESOURCES"),
            ({"ELASTISERVE_SERVING_RESOURCES": '{"limit": {"memory": "1Gi"}}'},
             "SERVING_RESOURCES"),
            ({"ELASTISERVE_SERVING_NODE_SELECTOR": '["a"]'}, "SERVING_NODE_SELECTOR"),
            ({"ELASTISERVE_SERVING_NODE_SELECTOR": '{"a": 1}'}, "SERVING_NODE_SELECTOR"),
            ({"ELASTISERVE_SERVING_TOLERATIONS": '{"key": "a"}'}, "SERVING_TOLERATIONS"),
            ({"ELASTISERVE_SERVING_TOLERATIONS": '[{"operator": "Maybe"}]'},
             "SERVING_TOLERATIONS"),
            ({"ELASTISERVE_SERVING_TOLERATIONS": '[{"tolerationSeconds": "5"}]'},
             "SERVING_TOLERATIONS"),
        ],
    )
    def test_a_bad_value_names_its_variable(self, env: dict[str, str], names: str) -> None:
        with pytest.raises(ValueError, match=f"^ELASTISERVE_[A-Z_]*{names}: ") as raised:
            settings_from_env(env)
        assert len(str(raised.value)) > len(f"ELASTISERVE_{names}: ") + 5  # says why

    def test_the_operator_refuses_to_start(self) -> None:
        import subprocess
        import sys

        env = {"PATH": "/usr/bin:/bin", "ELASTISERVE_DEFAULT_TOLERANCE": "2"}
        done = subprocess.run([sys.executable, "-m", "elastiserve_operator"], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2
        assert "ELASTISERVE_DEFAULT_TOLERANCE" in done.stderr
