"""GGUF files as a model source: `gguf:<path to a .gguf file>` and the bundled GGUF models (smollm2-135m,
gemma3-270m). transformers reads them with `from_pretrained(folder, gguf_file=name)` (the `gguf` package),
dequantizing every tensor to float: the baseline of such a model is a dequantized Q4_1/Q4_K_M file, not the
original model, and the origin and `source_format` say so.

Checks that need no weights (magic, header, truncation, tensor types, architecture) run in `resolve`, so
`qbench validate` refuses a bad file with one line; whatever transformers still refuses fails at load, also
as one line.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

from qbench.errors import ModelError
from qbench.models.base import DTYPES, LoadedModel, ModelSource, context_length, finish, first_line, model_class
from qbench.models.bundled import BUNDLED, Bundled, package_dir
from qbench.models.gguf_header import GGUFHeader, read_header
from qbench.schema.experiment import ModelRef

SEQ2SEQ = ("t5", "t5encoder", "umt5")   # GGUF architectures transformers reads but qbench does not run


class GGUFFileSource(ModelSource):
    """`gguf:<path>`: any local GGUF file whose architecture transformers can dequantize."""

    name, ids = "gguf", "gguf:<path to a .gguf file>"

    def matches(self, model_id: str) -> bool:
        return model_id.startswith("gguf:")

    def resolve(self, ref: ModelRef) -> tuple[str, str]:
        path = self._path(ref)
        header = check_file(ref, path)
        return str(path.resolve()), origin_text(f"GGUF file {path.name}", header)

    def _path(self, ref: ModelRef) -> Path:
        target = ref.id[len("gguf:"):]
        if not target:
            raise ModelError("model id 'gguf:' names no file; use gguf:<path to a .gguf file>")
        path = Path(target).expanduser()
        if not path.is_file():
            raise ModelError(f"model '{ref.id}': no such file {target}")
        return path

    def load(self, ref: ModelRef, dtype: str, device: str) -> LoadedModel:
        path = self._path(ref).resolve()
        return load_gguf(ref, path, f"GGUF file {path.name}", dtype, device)

    def skeleton(self, ref: ModelRef):
        return gguf_skeleton(ref, self._path(ref).resolve())


class BundledGGUFSource(GGUFFileSource):
    """Short ids of BUNDLED models shipped as a GGUF file inside a package (or assembled from chunk packages)."""

    name, ids = "bundled_gguf", "bundled GGUF short names"

    def matches(self, model_id: str) -> bool:
        return model_id in BUNDLED and BUNDLED[model_id].gguf is not None

    def resolve(self, ref: ModelRef) -> tuple[str, str]:
        b = BUNDLED[ref.id]
        path = self._file(ref, b, assemble=False)
        if not path.is_file():      # chunks installed but not assembled yet: load/skeleton assemble them
            return str(path), origin_text(b.origin, None)
        return str(path), origin_text(b.origin, check_file(ref, path))

    def _path(self, ref: ModelRef) -> Path:
        return self._file(ref, BUNDLED[ref.id], assemble=True)

    def load(self, ref: ModelRef, dtype: str, device: str) -> LoadedModel:
        return load_gguf(ref, self._path(ref), BUNDLED[ref.id].origin, dtype, device)

    @staticmethod
    def _file(ref: ModelRef, b: Bundled, assemble: bool) -> Path:
        folder = package_dir(ref.id, b)
        if not b.parts:
            path = folder / b.gguf
            if not path.is_file():
                raise ModelError(f"model '{ref.id}': {path} is missing (reinstall: {b.install})")
            return path
        from qbench.cache import cache_dir

        path = cache_dir() / "gguf" / b.gguf   # chunk packages: the package's assemble() writes one file here
        if assemble and not path.is_file():
            import importlib

            from qbench.atomic import atomic_path

            try:   # assembled beside the target and renamed, so an interrupted copy never poses as the file
                with atomic_path(path) as tmp:
                    importlib.import_module(b.package).assemble(output_path=tmp, overwrite=True)  # checks sha256
            except Exception as e:
                raise ModelError(f"model '{ref.id}': assembling {b.gguf} from its chunk packages failed: "
                                 f"{type(e).__name__}: {first_line(e)}") from None
        return path


def check_file(ref: ModelRef, path: Path) -> GGUFHeader:
    """The cheap checks: gguf installed, a GGUF header that parses and fits the file, an architecture that
    transformers dequantizes and qbench runs. ModelError with one line otherwise."""
    import importlib.util

    if ref.revision or ref.trust_remote_code or ref.allow_pickle:
        raise ModelError(f"model '{ref.id}': revision, trust_remote_code and allow_pickle apply to hf: models, "
                         "not to a GGUF file")
    for package in ("gguf", "accelerate"):     # transformers needs both to load a GGUF file
        if importlib.util.find_spec(package) is None:
            raise ModelError(f"model '{ref.id}' needs the {package} package to load GGUF files: pip install {package}")
    try:
        header = read_header(path)
    except ModelError as e:
        raise ModelError(f"model '{ref.id}': {e}") from None
    _check_architecture(ref, header.architecture)
    return header


def _check_architecture(ref: ModelRef, arch: str) -> None:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING  # a dict: no torch import

    known = set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"}
    # transformers renames a few GGUF names on load (modeling_gguf_pytorch_utils.load_gguf_checkpoint)
    names = {arch, arch.replace("-", "_"), re.sub(r"(\d)moe$", r"\1_moe", arch)}
    if arch in SEQ2SEQ:
        raise ModelError(f"model '{ref.id}': GGUF architecture '{arch}' is a sequence-to-sequence model; qbench "
                         "runs causal LMs and encoders")
    if not names & known:
        import transformers

        raise ModelError(f"model '{ref.id}': transformers {transformers.__version__} cannot dequantize GGUF "
                         f"architecture '{arch or '(none)'}' (it reads {', '.join(sorted(known))})")


def origin_text(what: str, header: GGUFHeader | None, dtype: str | None = None) -> str:
    """The provenance a card prints: what the file is, and that the baseline is its dequantization."""
    ft = (header.file_type if header else None) or "quantized"
    return (f"{what}. Baseline: the {dtype or 'float'} dequantization of this {ft} file: its weights were "
            "quantized before qbench saw them, so it is not the original model")


def gguf_task(ref: ModelRef) -> str:
    """GGUF models that transformers reads and qbench runs are decoders (seq2seq ones fail in check_file)."""
    return "causal_lm" if ref.task == "auto" else ref.task


def load_gguf(ref: ModelRef, path: Path, what: str, dtype: str, device: str) -> LoadedModel:
    """Tokenizer and model from the file, dequantized to `dtype`; source_format records the file."""
    import torch
    import transformers

    from qbench.models.gguf_provenance import source_format

    header = check_file(ref, path)
    task = gguf_task(ref)
    folder, name = str(path.parent), path.name
    transformers.utils.logging.disable_progress_bar()
    try:
        with _quiet_progress():
            config = transformers.AutoConfig.from_pretrained(folder, gguf_file=name)
            tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = model_class(task).from_pretrained(folder, gguf_file=name, config=config,
                                                      dtype=getattr(torch, DTYPES[dtype]))
    except Exception as e:  # transformers raises many types for files it cannot map or dequantize
        raise ModelError(f"model '{ref.id}' could not be loaded from {path}: {type(e).__name__}: "
                         f"{first_line(e)}") from None
    finish(model, tok, device)
    b = BUNDLED.get(ref.id)
    fmt = source_format(path, model, dtype, derived_from=b.derived_from if b else None)
    return LoadedModel(model, tok, task, str(path), origin_text(what, header, dtype),
                       context_length(model.config), fmt)


def gguf_skeleton(ref: ModelRef, path: Path):
    """(model on the meta device, task, context length): the config comes from the file's metadata through
    transformers' GGUF reader, which maps the file and reads no tensor data."""
    import torch
    import transformers

    check_file(ref, path)
    task = gguf_task(ref)
    try:
        config = transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise ModelError(f"model '{ref.id}': cannot read its config from {path}: {type(e).__name__}: "
                         f"{first_line(e)}") from None
    with torch.device("meta"):
        model = model_class(task).from_config(config)
    return model, task, context_length(config)


@contextmanager
def _quiet_progress():
    """transformers' GGUF loader draws its own tqdm bar, which disable_progress_bar() does not reach."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    saved = gguf_utils.tqdm
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        gguf_utils.tqdm = saved
