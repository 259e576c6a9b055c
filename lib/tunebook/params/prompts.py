"""The default prompt texts of the teachers, the judge, RAG and self-critique, and the fields each may use.

They are the defaults of their params fields (see tunebook.params.schema), so a run's prompts are recorded with
its params and can be changed in a params file.
"""

DEFAULT_SYSTEM_PROMPT = "You write precise training data from technical documentation."

DEFAULT_QUESTION_PROMPT = """Read the passage from the documentation below and write {n} questions that a user of it
might ask and that the passage answers. Related passages are given for context only.

Passage ({source}):
{chunk}

Related passages:
{context}

Reply with a JSON list of {n} strings and nothing else."""

DEFAULT_ANSWER_PROMPT = """Answer the question using only the documentation passage below, in one or two sentences.

Passage ({source}):
{chunk}

Question: {question}"""


DEFAULT_RUBRIC = """10: correct and complete; says nothing the reference does not support.
7-9: correct, with a minor omission or extra detail that is still true.
4-6: partly correct: misses a key point, or adds a doubtful claim.
2-3: mostly wrong or off the question, with something relevant in it.
1: wrong, empty, unreadable or made up."""

DEFAULT_GRADE_PROMPT = """Grade an answer to a question about technical documentation against the reference answer.

Rubric (score 1-10):
{rubric}

Question: {question}

Reference answer: {reference}

Answer to grade: {answer}

Reply with a JSON object and nothing else: {{"score": <integer 1-10>, "reason": "<one sentence>"}}"""

DEFAULT_PAIRWISE_PROMPT = """Two assistants answered the same question about technical documentation. Decide which
answer is better by the rubric below, checking both against the reference answer. Neither the order of
the answers nor their length may sway you.

Rubric:
{rubric}

Question: {question}

Reference answer: {reference}

Answer A: {answer_a}

Answer B: {answer_b}

Reply with a JSON object and nothing else: {{"winner": "A"}}, {{"winner": "B"}} or {{"winner": "tie"}}"""

DEFAULT_FAILURE_PROMPT = """An answer to a question about technical documentation was graded as a failure. Say why,
with one label:
- wrong: it contradicts the reference answer
- incomplete: what it says is right, but it misses key parts of the reference answer
- hallucinated: it makes up facts found neither in the reference answer nor in the source passage
- format: it is empty, cut off, stuck in a loop or unreadable

Question: {question}

Reference answer: {reference}

Source passage: {source}

Answer: {answer}

Reply with a JSON object and nothing else:
{{"label": "<wrong|incomplete|hallucinated|format>", "reason": "<one sentence>"}}"""

# The fields each judge prompt may use.
JUDGE_PROMPT_FIELDS = {
    "grade_prompt": ("rubric", "question", "reference", "answer"),
    "pairwise_prompt": ("rubric", "question", "reference", "answer_a", "answer_b"),
    "failure_prompt": ("rubric", "question", "reference", "answer", "source"),
}


DEFAULT_RAG_PROMPT = """Answer the question. These excerpts of the documentation may help:

{context}

Question: {question}"""


DEFAULT_CRITIQUE_PROMPT = """Here is a question, a reference answer and an answer that was judged a failure ({label}).
Say in one sentence what is wrong with the answer, then write a better answer.

Question: {question}

Reference answer: {reference}

Answer: {answer}

Reply with a JSON object and nothing else: {{"critique": "<one sentence>", "revision": "<the better answer>"}}"""
