"""`Reactor.start(address=...)` joins a running two-node Ray cluster, serves, and leaves it running.

The test's own process already runs a local Ray instance (the session fixture), and a process joins at
most one: the scenario runs in a child process that starts the cluster (`ray.cluster_utils.Cluster`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCENARIO = textwrap.dedent(
    """
    import asyncio, json, sys
    import ray, torch
    from ray.cluster_utils import Cluster
    from reactor_rt import Reactor
    from reactor_rt.model import ReactiveTransformer, RxTConfig
    from reactor_rt.template import build_prompt
    from reactor_rt.tokenizer import ByteTokenizer

    class Printable(ByteTokenizer):
        # never [EOS] (answers run to their budget) and one printable character per id
        def __init__(self):
            super().__init__()
            self.eos_id = -1

        def decode(self, ids, skip_special=True):
            return "".join(chr(0x4E00 + int(i)) for i in ids)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    torch.manual_seed(0)
    model = ReactiveTransformer(RxTConfig.preset("tiny"), Printable()).eval()
    prompt = torch.tensor(build_prompt(model.tokenizer, "hello there"))
    direct = model.tokenizer.decode(model.generate(prompt[None], model.init_stm(1), max_new_tokens=8)[0].tolist())

    def node_of(actor):
        return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))

    async def main():
        out = {}
        async with Reactor.start(model=model, store="memory://", address=cluster.address, max_new_tokens=8,
                                 learning=False) as rx:
            stream = await rx.stream("joined")
            out["answer"] = await stream.reply("hello there")
            out["direct"] = direct
            out["types"] = [e.type async for e in stream.ask("and again")]
            out["actor_nodes"] = sorted({node_of(ray.get_actor(n, namespace="reactor_rt"))
                                         for n in ("decoder", "encoder", "memory", "stm", "conductor")})
            out["cluster_nodes"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        out["connected_after_close"] = ray.is_initialized()
        # the cluster outlives the runtime that joined it: connect again and run a task on it
        ray.init(address=cluster.address, log_to_driver=False)
        out["alive_after_close"] = sum(n["Alive"] for n in ray.nodes())
        out["task_after_close"] = ray.get(ray.remote(lambda: 41 + 1).remote())
        try:
            ray.get_actor("decoder", namespace="reactor_rt")
            out["actors_left"] = True
        except ValueError:
            out["actors_left"] = False
        ray.shutdown()
        print("RESULT " + json.dumps(out))

    try:
        asyncio.run(main())
    finally:
        cluster.shutdown()
    """
)


@pytest.mark.ray
def test_reactor_joins_a_two_node_cluster_and_leaves_it_running(tmp_path):
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", SCENARIO], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    out = json.loads(lines[-1][len("RESULT "):])
    # the first answer reads the initial STM: the same greedy tokens as the model called directly
    assert len(out["answer"]) == 8 and out["answer"] == out["direct"]
    assert out["types"][0] == "rx.query" and out["types"][-1] == "rx.memory.updated"
    assert {"rx.response.chunk", "rx.response.done", "rx.memory.updating"} <= set(out["types"])
    assert len(out["cluster_nodes"]) == 2
    assert set(out["actor_nodes"]) <= set(out["cluster_nodes"])  # Ray places them (here: on both nodes)
    # leaving the runtime disconnects this process and stops the actors, not the cluster it joined
    assert out["connected_after_close"] is False
    assert out["alive_after_close"] == 2 and out["task_after_close"] == 42
    assert out["actors_left"] is False
