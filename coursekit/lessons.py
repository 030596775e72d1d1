"""The lesson table: one row per exercise, in teaching order.

Most lessons are one exercise. A lesson in parts (L05: PyTorch, then Triton)
has a row per part: each part has its own id ("L05.1_flash_attention_pytorch"),
shares the lesson's folder (tutorial/, testcases/, notebooks/) and narrows the
folder's tests with `select`, a pytest -m expression ("not triton").
"""
import re
from dataclasses import dataclass

from coursekit import COURSE_ROOT


@dataclass(frozen=True)
class Lesson:
    id: str          # "L01_scaled_dot_product", or for a part of a lesson "L05.2_flash_attention_triton"
    title: str
    modules: tuple   # modules of model/ the exercise lives in
    folder: str = None  # folder name under tutorial/, testcases/, notebooks/ (default: id)
    select: str | None = None  # pytest -m expression narrowing the folder's tests to this exercise (None: all)

    def __post_init__(self):
        if self.folder is None:
            object.__setattr__(self, "folder", self.id)

    @property
    def number(self) -> str:
        """The lesson's number, "L05" (the same for every part of it)."""
        return self.id[:3]

    @property
    def code(self) -> str:
        """What a student types: "L03", or "L05.1" for a part."""
        return self.id.split("_")[0]

    @property
    def is_part(self) -> bool:
        return self.folder != self.id

    @property
    def tests(self):
        return COURSE_ROOT / "testcases" / self.folder

    @property
    def notebook(self):
        return COURSE_ROOT / "notebooks" / f"{self.folder}.ipynb"

    @property
    def tutorial(self):
        return COURSE_ROOT / "tutorial" / self.folder / "README.md"

    @property
    def known_wrong(self):
        return self.tests / "known_wrong"

    @property
    def available(self) -> bool:
        """Has the lesson landed yet (its test suite exists)?"""
        return (self.tests / "test_basic.py").exists()

    def marker_expression(self, suites: str) -> str:
        """The -m expression for `suites` ("basic", "basic or advanced") of this exercise."""
        return f"({suites}) and ({self.select})" if self.select else suites

    def selects(self, markers) -> bool:
        """Does `select` keep a test carrying `markers` (names, as in a --course-report entry)?"""
        if not self.select:
            return True
        names = set(markers)
        words = re.findall(r"[A-Za-z_]\w*", self.select)
        truth = {word: word in names for word in words if word not in ("and", "or", "not")}
        return bool(eval(self.select, {"__builtins__": {}}, truth))  # only marker names, and/or/not, parentheses


LESSONS = (
    Lesson("L01_scaled_dot_product", "Scaled dot-product attention", ("scaled_dot_product",)),
    Lesson("L02_stable_softmax", "Stable and online softmax", ("softmax",)),
    Lesson("L03_masks", "Masks: causal, padding, cached", ("masks",)),
    Lesson("L04_kv_cache", "KV-cache and incremental decoding", ("kv_cache",)),
    Lesson("L05.1_flash_attention_pytorch", "FlashAttention, part 1: tiled attention in PyTorch (CPU)",
           ("flash_attention",), folder="L05_flash_attention", select="not triton"),
    Lesson("L05.2_flash_attention_triton", "FlashAttention, part 2: the Triton kernels",
           ("flash_attention_triton",), folder="L05_flash_attention", select="triton"),
    Lesson("L06_gqa", "Multi-query and grouped-query attention", ("gqa",)),
    Lesson("L07_sliding_window", "Sliding-window attention", ("sliding_window",)),
    Lesson("L08_fused_ops", "Fused ops with recomputation", ("fused_ops", "fused_ops_triton")),
    Lesson("L09_rope_decoder", "RoPE and a Llama-shaped decoder", ("rope", "decoder")),
    Lesson("L10_decode_attention", "Decode attention: split-KV and GQA packing",
           ("decode_attention", "decode_attention_triton")),
    Lesson("L11_paged_kv_cache", "The paged KV cache and continuous batching", ("paged_kv_cache", "paged_attention_triton", "serving")),
    Lesson("L12_kv_compression", "Compressing the KV cache: quantization, eviction, sinks",
           ("kv_quant", "kv_eviction", "kv_quant_triton")),
    Lesson("L13_linear_attention", "Linear attention: parallel, recurrent and chunked",
           ("linear_attention", "linear_attention_triton")),
)


def lesson_folders() -> tuple:
    """One Lesson per lesson folder, in teaching order: a lesson in parts is
    merged into one (its folder as id, every module, no select). For what is
    per folder: the release, the notebooks, nbgrader assignments."""
    merged = {}
    for lesson in LESSONS:
        if lesson.folder in merged:
            first = merged[lesson.folder]
            merged[lesson.folder] = Lesson(first.id, first.title, first.modules + lesson.modules, first.folder)
        elif lesson.is_part:
            title = lesson.title.split(",")[0]  # "FlashAttention, part 1: ..." -> "FlashAttention"
            merged[lesson.folder] = Lesson(lesson.folder, title, lesson.modules)
        else:
            merged[lesson.folder] = lesson
    return tuple(merged.values())


def _normalise(name: str) -> str:
    """"3" -> "l03", "5.1" / "05.1" / "L5.1" -> "l05.1"; anything else lower-cased."""
    key = name.strip().lower()
    number = re.fullmatch(r"l?(\d+)(?:\.(\d+))?", key)
    if number:
        key = f"l{int(number.group(1)):02d}" + (f".{int(number.group(2))}" if number.group(2) else "")
    return key


def find_lesson(name: str) -> Lesson:
    """Accepts "L03", "3", "03", "L03_masks" or "masks"; for a lesson in parts
    "L05.1" / "5.1" / "L05.1_flash_attention_pytorch" / "flash_attention_pytorch"
    name one part, and "L05" / "5" / "L05_flash_attention" / "flash_attention"
    the whole lesson (every part: select None)."""
    key = _normalise(name)
    for lesson in lesson_folders():  # whole lessons first: "L05" is both of its parts
        lid = lesson.id.lower()
        if key in (lid, lid[:3], lid[4:]):
            return lesson
    for lesson in LESSONS:
        lid = lesson.id.lower()
        if key in (lid, lesson.code.lower(), lid[len(lesson.code) + 1:]):
            return lesson
    parts = {lesson.id for lesson in LESSONS}
    wholes = ", ".join(lesson.id for lesson in lesson_folders() if lesson.id not in parts)
    known = ", ".join(lesson.id for lesson in LESSONS)
    raise ValueError(f"unknown lesson {name!r}; expected one of: {known} (as a whole, both parts: {wholes})")


def lesson_of_module(module: str) -> Lesson:
    for lesson in LESSONS:
        if module in lesson.modules:
            return lesson
    raise ValueError(f"module {module!r} belongs to no lesson")
