"""What the board remembers on its data partition: the journal, the history, the slot records,
and the power-safe writes they all go through."""
