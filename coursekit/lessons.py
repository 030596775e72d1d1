"""The lesson table: one row per lesson, in teaching order."""
from dataclasses import dataclass

from coursekit import COURSE_ROOT


@dataclass(frozen=True)
class Lesson:
    id: str          # "L01_scaled_dot_product": folder name under tutorial/, testcases/, notebooks/
    title: str
    modules: tuple   # modules of model/ the lesson's exercises live in

    @property
    def number(self) -> str:
        return self.id[:3]

    @property
    def tests(self):
        return COURSE_ROOT / "testcases" / self.id

    @property
    def notebook(self):
        return COURSE_ROOT / "notebooks" / f"{self.id}.ipynb"

    @property
    def tutorial(self):
        return COURSE_ROOT / "tutorial" / self.id / "README.md"

    @property
    def known_wrong(self):
        return self.tests / "known_wrong"

    @property
    def available(self) -> bool:
        """Has the lesson landed yet (its test suite exists)?"""
        return (self.tests / "test_basic.py").exists()


LESSONS = (
    Lesson("L01_scaled_dot_product", "Scaled dot-product attention", ("scaled_dot_product",)),
    Lesson("L02_stable_softmax", "Stable and online softmax", ("softmax",)),
    Lesson("L03_masks", "Masks: causal, padding, cached", ("masks",)),
    Lesson("L04_kv_cache", "KV-cache and incremental decoding", ("kv_cache",)),
    Lesson("L05_flash_attention", "FlashAttention on CPU and in Triton",
           ("flash_attention", "flash_attention_triton")),
    Lesson("L06_gqa", "Multi-query and grouped-query attention", ("gqa",)),
    Lesson("L07_sliding_window", "Sliding-window attention", ("sliding_window",)),
    Lesson("L08_fused_ops", "Fused ops with recomputation", ("fused_ops", "fused_ops_triton")),
    Lesson("L09_rope_decoder", "RoPE and a Llama-shaped decoder", ("rope", "decoder")),
    Lesson("L12_kv_compression", "Compressing the KV cache: quantization, eviction, sinks",
           ("kv_quant", "kv_eviction")),
)


def find_lesson(name: str) -> Lesson:
    """Accepts "L03", "3", "03", "L03_masks" or "masks"."""
    key = name.strip().lower()
    if key.isdigit():
        key = f"l{int(key):02d}"
    for lesson in LESSONS:
        lid = lesson.id.lower()
        if key in (lid, lid[:3], lid[4:]):
            return lesson
    known = ", ".join(lesson.id for lesson in LESSONS)
    raise ValueError(f"unknown lesson {name!r}; expected one of: {known}")


def lesson_of_module(module: str) -> Lesson:
    for lesson in LESSONS:
        if module in lesson.modules:
            return lesson
    raise ValueError(f"module {module!r} belongs to no lesson")
