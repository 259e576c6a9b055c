"""Teachers turn chunks into question/answer pairs."""
