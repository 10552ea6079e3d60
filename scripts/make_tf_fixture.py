"""Write the tiny OpenAI-layout TensorFlow checkpoint that tests/conversion uses as a fixture.

Run it once, with a Python that has TensorFlow (gptlite itself never needs it):

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu numpy
    /tmp/tfvenv/bin/python scripts/make_tf_fixture.py

It writes `tests/conversion/fixtures/openai-tiny/` the way OpenAI's `gpt-2` code saved its release
(`tf.compat.v1.train.Saver`, variables under `model/`, so there are `checkpoint`, `hparams.json`,
`model.ckpt.index`, `model.ckpt.data-00000-of-00001` and `model.ckpt.meta`), plus
`tests/conversion/fixtures/openai-tiny.npz` with the same arrays, so tests can build a transformers
GPT-2 from them without TensorFlow. The BPE files are deliberately not copied: the converter must work
without them. Finally it reads the checkpoint back with both `tf.train.load_checkpoint` and gptlite's
own reader and checks that every tensor agrees.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "conversion" / "fixtures"

# Tiny but not degenerate: several heads, two blocks, a vocabulary that is not GPT-2's and a context
# that is not 1024, so the converter has to take every size from hparams.json.
HPARAMS = {"n_vocab": 80, "n_ctx": 20, "n_embd": 16, "n_head": 2, "n_layer": 2}


def make_arrays(hparams: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under OpenAI's variable names and shapes (Conv1D kernels are [1, in, out])."""
    rng = np.random.default_rng(seed)
    e, v, c = hparams["n_embd"], hparams["n_vocab"], hparams["n_ctx"]

    def normal(*shape: int, std: float = 0.2) -> np.ndarray:
        # A larger spread than GPT-2's 0.02 keeps logits far apart, so a wrong mapping cannot hide.
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    arrays = {"model/wte": normal(v, e), "model/wpe": normal(c, e)}
    for i in range(hparams["n_layer"]):
        p = f"model/h{i}"
        arrays.update({
            f"{p}/ln_1/g": 1.0 + normal(e, std=0.1),
            f"{p}/ln_1/b": normal(e, std=0.1),
            f"{p}/attn/c_attn/w": normal(1, e, 3 * e),
            f"{p}/attn/c_attn/b": normal(3 * e, std=0.1),
            f"{p}/attn/c_proj/w": normal(1, e, e),
            f"{p}/attn/c_proj/b": normal(e, std=0.1),
            f"{p}/ln_2/g": 1.0 + normal(e, std=0.1),
            f"{p}/ln_2/b": normal(e, std=0.1),
            f"{p}/mlp/c_fc/w": normal(1, e, 4 * e),
            f"{p}/mlp/c_fc/b": normal(4 * e, std=0.1),
            f"{p}/mlp/c_proj/w": normal(1, 4 * e, e),
            f"{p}/mlp/c_proj/b": normal(e, std=0.1),
        })
    arrays["model/ln_f/g"] = 1.0 + normal(e, std=0.1)
    arrays["model/ln_f/b"] = normal(e, std=0.1)
    return arrays


def save_checkpoint(arrays: dict[str, np.ndarray], out_dir: Path) -> None:
    """Save with tf.compat.v1's Saver, creating the variables through scopes as OpenAI's model.py does."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        variables = {}
        for name, value in arrays.items():
            *scopes, leaf = name.split("/")
            with tf1.variable_scope("/".join(scopes)):
                # Values are loaded after initialisation rather than passed as initializers: an initializer
                # constant would be stored in the .meta graph too and double the fixture's size.
                variables[name] = tf1.get_variable(leaf, shape=value.shape, dtype=tf.float32)
        # Relative paths in `checkpoint`, like OpenAI's release (otherwise it records this machine's path).
        saver = tf1.train.Saver(save_relative_paths=True)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            for name, var in variables.items():
                if var.op.name != name:
                    raise RuntimeError(f"variable {name} was created as {var.op.name}")
                var.load(arrays[name], sess)
            saver.save(sess, str(out_dir / "model.ckpt"))


def import_reader():
    """gptlite's tensor-bundle reader, imported without running gptlite/__init__ (no torch needed)."""
    packages = {"gptlite": ROOT / "gptlite", "gptlite.conversion": ROOT / "gptlite" / "conversion"}
    for name, path in packages.items():
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules.setdefault(name, package)
    return importlib.import_module("gptlite.conversion.tf_bundle")


def check(arrays: dict[str, np.ndarray], out_dir: Path) -> None:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(out_dir))
    tf_names = set(reader.get_variable_to_shape_map())
    if tf_names != set(arrays):
        raise RuntimeError(f"TensorFlow sees {sorted(tf_names ^ set(arrays))} differently")
    bundle = import_reader().TensorBundle.from_directory(out_dir)
    if set(bundle.keys()) != set(arrays):
        raise RuntimeError(f"gptlite sees {sorted(set(bundle.keys()) ^ set(arrays))} differently")
    for name, value in arrays.items():
        np.testing.assert_array_equal(reader.get_tensor(name), value, err_msg=f"TensorFlow: {name}")
        np.testing.assert_array_equal(bundle.read(name), value, err_msg=f"gptlite: {name}")
    print(f"checked {len(arrays)} tensors with TensorFlow {tf.__version__} and gptlite's reader")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIXTURES / "openai-tiny", help="checkpoint folder")
    args = parser.parse_args(argv)

    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = make_arrays(HPARAMS)
    save_checkpoint(arrays, out_dir)
    (out_dir / "hparams.json").write_text(json.dumps(HPARAMS, indent=2) + "\n")
    np.savez_compressed(out_dir.with_suffix(".npz"), **arrays)
    check(arrays, out_dir)
    for path in sorted([*out_dir.iterdir(), out_dir.with_suffix(".npz")]):
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
