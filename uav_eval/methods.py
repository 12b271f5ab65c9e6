"""The evaluation methods by name, and what each shows the decoder: the one list the protocol, the controls,
the report and the CLI share. Torch-free, so the report and `uav --help` stay light."""

from __future__ import annotations

METHODS = {
    "uav": "the run's adapter turns the stored activation into soft tokens; the run's LoRA decoder answers.",
    "shuffled": "exactly uav, but each item is shown another test item's activation (a fixed-seed derangement "
                "within its source): the reference that says whether the answer depends on the activation.",
    "no_soft": "the same decoder, question only: what decoder tuning alone gives (answer priors).",
    "random_adapter": "the trained LoRA with a freshly initialised adapter: is it the activation or the slot?",
    "base_only": "the untuned decoder, question only.",
    "input_text": "the trained decoder shown the donor's raw text where the soft tokens go: the inversion ceiling "
                  "(everything the activation could say if it encoded the text perfectly).",
    "selfie": "training-free self-explanation (SelfIE / Patchscope): the untuned decoder, one placeholder whose "
              "hidden state at the donor's layer is overwritten by the activation. Only when donor == decoder.",
}
CONTROLS = tuple(m for m in METHODS if m != "uav")
BYPASS_LORA = ("base_only", "selfie")  # the methods that show the untuned decoder: the run's LoRA is bypassed
# the methods that show the question alone: their greedy answer is the same for every item that asks the same question,
# so the evaluation generates it once per distinct question (the demo's 190 test items ask 13)
QUESTION_ONLY = ("no_soft", "base_only")
# uav − shuffled is measured on this metric per task group; token F1 for every other group
READING_METRIC = {"classification": "acc", "yesno": "acc"}
