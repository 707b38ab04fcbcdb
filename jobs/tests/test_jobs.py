"""Every job trains (or converts) for real on the tiny model, through the contract (subprocess + events)."""

from __future__ import annotations

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import helpers  # noqa: E402
from tests.helpers import demo, job_config, run_job, workdir  # noqa: E402


def assert_contract(test: unittest.TestCase, result, *, total_steps: int | None = None, checkpoints=None):
    """started first, done last, progress steps increasing, checkpoints complete on disk."""
    test.assertEqual(result.rc, 0, result)
    test.assertEqual(result.events[0]["event"], "started", result)
    test.assertEqual(result.events[-1]["event"], "done", result)
    if total_steps is not None:
        test.assertEqual(result.one("started")["total_steps"], total_steps)
    steps = [e["step"] for e in result.of("progress")]
    test.assertEqual(steps, sorted(steps))
    for ev in result.of("checkpoint"):
        test.assertTrue(os.path.isfile(os.path.join(ev["path"], "trainer_state.json")), ev)
    if checkpoints is not None:
        test.assertEqual([e["step"] for e in result.of("checkpoint")], checkpoints)


class TrainingJobsTest(unittest.TestCase):
    def test_sft_lora_chat_and_resume_equivalence(self):
        straight = workdir("sft-straight")
        cfg = job_config("sft", straight, inputs={"model": helpers.tiny_model()},
                         datasets={"train": demo("sft.jsonl"), "eval": demo("sft_eval.jsonl")},
                         hyper={"max_steps": 6, "save_steps": 3})
        full = run_job("sft", cfg)
        assert_contract(self, full, total_steps=6, checkpoints=[3, 6])
        self.assertIn("eval_loss", full.one("done")["metrics"])
        # The time training stood still for each save, measured by the job: in each event and the summary.
        saves = [e["save_seconds"] for e in full.of("checkpoint")]
        self.assertTrue(all(s > 0 for s in saves), saves)
        done = full.one("done")["metrics"]
        self.assertEqual(done["checkpoint_saves"], 2)
        self.assertAlmostEqual(done["checkpoint_save_seconds_max"], max(saves), delta=1e-3)
        self.assertGreater(done["step_seconds_median"], 0)
        self.assertGreater(done["checkpoint_save_in_steps"], 0)
        self.assertTrue(os.path.isfile(os.path.join(cfg["output_dir"], "adapter_model.safetensors")))
        losses = {e["step"]: e["loss"] for e in full.of("progress")}

        resumed_dir = workdir("sft-resumed")
        cfg2 = job_config("sft", resumed_dir, inputs={"model": helpers.tiny_model()},
                          datasets={"train": demo("sft.jsonl")}, hyper={"max_steps": 6, "save_steps": 3},
                          resume_from=full.of("checkpoint")[0]["path"])
        resumed = run_job("sft", cfg2)
        assert_contract(self, resumed, total_steps=6, checkpoints=[6])
        self.assertEqual(resumed.one("started")["resumed_from_step"], 3)
        resumed_losses = {e["step"]: e["loss"] for e in resumed.of("progress")}
        self.assertEqual(sorted(resumed_losses), [4, 5, 6])
        for step in (4, 5, 6):
            self.assertAlmostEqual(resumed_losses[step], losses[step], delta=1e-3)

    def test_cpt_on_text_full(self):
        work = workdir("cpt")
        cfg = job_config("cpt", work, inputs={"model": helpers.tiny_model()}, datasets={"train": demo("text.jsonl")},
                         finetuning={"type": "full"}, hyper={"max_steps": 3, "save_steps": None})
        result = run_job("sft", cfg)
        assert_contract(self, result, total_steps=3, checkpoints=[])
        self.assertTrue(os.path.isfile(os.path.join(cfg["output_dir"], "model.safetensors")))

    def test_sft_alpaca_and_sharegpt(self):
        for name in ("alpaca", "sharegpt"):
            work = workdir(f"sft-{name}")
            cfg = job_config("sft", work, inputs={"model": helpers.tiny_model()},
                             datasets={"train": demo(f"{name}.jsonl")}, dataset_format=name,
                             hyper={"max_steps": 2, "save_steps": None})
            assert_contract(self, run_job("sft", cfg), total_steps=2)

    def test_bad_data_exits_3_before_training(self):
        work = workdir("sft-bad")
        bad = os.path.join(work, "train.jsonl")
        with open(bad, "w") as f:
            f.write('{"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}\n')
        cfg = job_config("sft", work, inputs={"model": helpers.tiny_model()}, datasets={"train": bad})
        result = run_job("sft", cfg)
        self.assertEqual(result.rc, 3, result)
        err = result.one("error")
        self.assertEqual((err["category"], err["file"], err["line"], err["field"]),
                         ("data", bad, 1, "messages[1].role"))
        self.assertEqual(result.of("started"), [])

    def test_qlora_on_cpu_exits_4(self):
        work = workdir("sft-qlora")
        cfg = job_config("sft", work, inputs={"model": helpers.tiny_model()}, datasets={"train": demo("sft.jsonl")},
                         finetuning={"type": "qlora"})
        result = run_job("sft", cfg)
        self.assertEqual(result.rc, 4, result)
        self.assertIn("qlora", result.one("error")["message"])

    def test_reward_accuracy_above_chance(self):
        helpers.reward_model()
        result = helpers.reward_model.result
        assert_contract(self, result, total_steps=30)
        metrics = result.one("done")["metrics"]
        self.assertGreaterEqual(metrics["accuracy"], 0.9, metrics)  # held-out pairs
        self.assertTrue(os.path.isfile(os.path.join(helpers.reward_model(), "model.safetensors")))

    def test_reward_lora_resumes(self):
        work = workdir("reward-lora")
        cfg = job_config("reward", work, inputs={"model": helpers.tiny_model()},
                         datasets={"train": demo("preference.jsonl")}, hyper={"max_steps": 4, "save_steps": 2})
        first = run_job("reward", cfg)
        assert_contract(self, first, total_steps=4, checkpoints=[2, 4])
        ckpt = first.of("checkpoint")[0]["path"]
        self.assertTrue(os.path.isfile(os.path.join(ckpt, "adapter_model.safetensors")))
        cfg["resume_from"] = ckpt
        cfg["checkpoint_dir"] = os.path.join(work, "checkpoints-2")
        second = run_job("reward", cfg)
        assert_contract(self, second, total_steps=4, checkpoints=[4])
        self.assertAlmostEqual(second.of("progress")[-1]["loss"], first.of("progress")[-1]["loss"], delta=1e-3)

    def test_dpo_from_adapter_then_merge_then_gguf(self):
        sft_dir = workdir("sft-for-dpo")
        sft = job_config("sft", sft_dir, inputs={"model": helpers.tiny_model()}, datasets={"train": demo("sft.jsonl")},
                         hyper={"max_steps": 2, "save_steps": None})
        assert_contract(self, run_job("sft", sft))

        work = workdir("dpo")
        cfg = job_config("dpo", work, inputs={"model": sft["output_dir"], "base": helpers.tiny_model()},
                         datasets={"train": demo("preference.jsonl")}, params={"beta": 0.1})
        result = run_job("dpo", cfg)
        assert_contract(self, result, total_steps=4, checkpoints=[2, 4])
        self.assertFalse(os.path.exists(os.path.join(cfg["output_dir"], "ref")))

        merged = workdir("merge")
        mcfg = job_config("merge", merged, inputs={"model": cfg["output_dir"], "base": helpers.tiny_model()},
                          checkpoint_dir=None, datasets={})
        assert_contract(self, run_job("merge", mcfg))
        self.assertTrue(os.path.isfile(os.path.join(mcfg["output_dir"], "model.safetensors")))

        g = workdir("gguf")
        gcfg = job_config("gguf", g, inputs={"model": mcfg["output_dir"]}, datasets={},
                          params={"types": ["f16", "q8_0", "q4_0"]})
        result = run_job("gguf", gcfg)
        assert_contract(self, result)
        check_gguf_files(self, mcfg["output_dir"], gcfg["output_dir"])

    def test_eval_reward_accuracy_and_loss(self):
        work = workdir("eval")
        cfg = job_config("eval", work, inputs={"reward_model": helpers.reward_model()}, checkpoint_dir=None,
                         datasets={"train": demo("preference_eval.jsonl")})
        result = run_job("eval", cfg)
        assert_contract(self, result)
        self.assertGreaterEqual(result.one("done")["metrics"]["accuracy"], 0.9)
        cfg = job_config("eval", workdir("eval-loss"), inputs={"model": helpers.sft_policy()}, checkpoint_dir=None,
                         datasets={"train": demo("sft_eval.jsonl")})
        result = run_job("eval", cfg)
        assert_contract(self, result)
        self.assertLess(result.one("done")["metrics"]["loss"], 5.0)

    def test_eval_against_a_baseline(self):
        """Relative metrics: the trained policy against the untrained model, and against itself (no gain, no KL)."""
        policy, untrained = helpers.sft_policy(), helpers.tiny_model()
        loss = run_job("eval", job_config("eval", workdir("eval-baseline-loss"), checkpoint_dir=None,
                                          inputs={"model": policy, "baseline": untrained},
                                          datasets={"train": demo("sft_eval.jsonl")}))
        assert_contract(self, loss)
        m = loss.one("done")["metrics"]
        self.assertLess(m["loss"], m["baseline_loss"], m)  # it learned the chats the untrained model has not
        self.assertAlmostEqual(m["loss_delta"], m["loss"] - m["baseline_loss"], places=6)
        self.assertLess(m["perplexity_ratio"], 1.0)

        prompts = {"train": demo("prompts.jsonl")}
        params = {"max_rows": 12, "max_new_tokens": 16}
        vs_untrained = run_job("eval", job_config("eval", workdir("eval-baseline-answers"), checkpoint_dir=None, params=params,
                                                  inputs={"model": policy, "baseline": untrained,
                                                          "reward_model": helpers.reward_model()}, datasets=prompts))
        assert_contract(self, vs_untrained)
        m = vs_untrained.one("done")["metrics"]
        for key in ("answer_length_mean", "baseline_answer_length_mean", "length_ratio", "reward_mean",
                    "baseline_reward_mean", "reward_delta", "win_rate", "kl"):
            self.assertIn(key, m)
        self.assertGreater(m["kl"], 0.01, m)
        self.assertTrue(0.0 <= m["win_rate"] <= 1.0, m)
        self.assertAlmostEqual(m["reward_delta"], m["reward_mean"] - m["baseline_reward_mean"], places=5)

        vs_itself = run_job("eval", job_config("eval", workdir("eval-baseline-itself"), checkpoint_dir=None, params=params,
                                               inputs={"model": policy, "baseline": policy,
                                                       "reward_model": helpers.reward_model()}, datasets=prompts))
        m = vs_itself.one("done")["metrics"]
        self.assertEqual(m["win_rate"], 0.5, m)  # the same answers: every prompt a tie
        self.assertEqual(m["length_ratio"], 1.0, m)
        self.assertAlmostEqual(m["kl"], 0.0, places=5)

        # A reference other than the baseline: KL from the untrained model, no baseline metrics.
        ref = run_job("eval", job_config("eval", workdir("eval-reference"), checkpoint_dir=None, params=params,
                                         inputs={"model": policy, "reference": untrained}, datasets=prompts))
        m = ref.one("done")["metrics"]
        self.assertGreater(m["kl"], 0.01, m)
        self.assertNotIn("win_rate", m)

    def test_grpo(self):
        work = workdir("grpo")
        cfg = job_config("grpo", work, inputs={"model": helpers.sft_policy(), "reward_model": helpers.reward_model()},
                         datasets={"train": demo("prompts.jsonl")},
                         params={"num_generations": 4, "max_completion_length": 24})
        result = run_job("grpo", cfg)
        assert_contract(self, result, total_steps=4, checkpoints=[2, 4])
        self.assertTrue(os.path.isfile(os.path.join(cfg["output_dir"], "adapter_model.safetensors")))


def check_gguf_files(test: unittest.TestCase, hf_dir: str, out_dir: str) -> None:
    """Files readable with GGUFReader, llama metadata and vocab, and a numpy forward pass of each file in
    llama.cpp's layout (interleaved rope) that matches the HF model's logits."""
    import gguf
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    for qtype, tol in (("f16", 0.02), ("q8_0", 0.1), ("q4_0", None)):
        reader = gguf.GGUFReader(os.path.join(out_dir, f"model-{qtype}.gguf"))
        fields = reader.fields
        test.assertEqual(bytes(fields["general.architecture"].parts[-1]).decode(), "llama")
        test.assertEqual(bytes(fields["tokenizer.ggml.model"].parts[-1]).decode(), "llama")
        template = bytes(fields["tokenizer.chat_template"].parts[-1]).decode()
        test.assertNotIn("{% generation", template)
        test.assertIn("<|im_start|>", template)
        test.assertEqual(len(fields["tokenizer.ggml.tokens"].data), model.config.vocab_size)
        eos = int(fields["tokenizer.ggml.eos_token_id"].parts[-1][0])
        test.assertEqual(eos, tok.eos_token_id)
        logits = numpy_llama_forward(reader, model.config, ids)
        if tol is not None:
            test.assertLess(float(np.abs(logits - ref).max()), tol, qtype)
        if qtype == "f16":
            test.assertTrue((logits.argmax(-1) == ref.argmax(-1)).all())
        test.assertGreater(float(np.corrcoef(logits.ravel(), ref.ravel())[0, 1]), 0.95, qtype)


def numpy_llama_forward(reader, config, ids):
    import gguf
    import numpy as np

    t = {}
    for tensor in reader.tensors:
        shape = tuple(int(x) for x in reversed(tensor.shape))
        t[tensor.name] = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape).astype(np.float32)

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + config.rms_norm_eps) * w

    def rope(x):  # llama.cpp "normal" rope: rotate adjacent pairs
        n, hd = x.shape[0], x.shape[-1]
        inv = config.rope_parameters["rope_theta"] ** (-np.arange(0, hd, 2) / hd)
        ang = np.arange(n)[:, None] * inv[None]
        cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
        return out

    nh, nkv = config.num_attention_heads, config.num_key_value_heads
    hd = config.hidden_size // nh
    h = t["token_embd.weight"][ids]
    n = len(ids)
    causal = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(config.num_hidden_layers):
        x = rms(h, t[f"blk.{i}.attn_norm.weight"])
        q = rope((x @ t[f"blk.{i}.attn_q.weight"].T).reshape(n, nh, hd))
        k = rope((x @ t[f"blk.{i}.attn_k.weight"].T).reshape(n, nkv, hd))
        v = (x @ t[f"blk.{i}.attn_v.weight"].T).reshape(n, nkv, hd)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        att = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + causal
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        h = h + np.einsum("hqk,khd->qhd", att, v).reshape(n, nh * hd) @ t[f"blk.{i}.attn_output.weight"].T
        x = rms(h, t[f"blk.{i}.ffn_norm.weight"])
        gate = x @ t[f"blk.{i}.ffn_gate.weight"].T
        h = h + ((gate / (1 + np.exp(-gate))) * (x @ t[f"blk.{i}.ffn_up.weight"].T)) @ t[f"blk.{i}.ffn_down.weight"].T
    return rms(h, t["output_norm.weight"]) @ t["output.weight"].T


if __name__ == "__main__":
    unittest.main()
