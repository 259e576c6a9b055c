"""The extractive teacher, which lifts question/answer pairs from the chunk's text itself: it is not an LLM.

Chat teachers (`hf`, `openai`) are models that `tunebook.llm` asks; the campaign in `tunebook.generate`
gives each chunk to one teacher or the other.
"""
