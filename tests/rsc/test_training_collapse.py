"""A model that ends at chance level is said to have collapsed, with what to do about it."""

from rsc.loop import collapse_note


def test_chance_level_is_called_a_collapse_and_names_the_learning_rate():
    note = collapse_note(1 / 21, 21, 0.05)
    assert note and "chance level for 21 classes" in note and "lower --lr (now 0.05; e.g. 0.01)" in note
    assert collapse_note(0.39, 21, 0.01) is None
    assert collapse_note(0.07, 21, 0.05) is not None and collapse_note(0.075, 21, 0.05) is None  # 1.5 / 21 = 0.0714
    assert collapse_note(None, 21, 0.05) is None
