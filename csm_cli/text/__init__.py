"""Text in: sentences as they arrive, speaker tags, utterances."""
