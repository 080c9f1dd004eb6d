"""The paper's evaluation: metrics on features, the protocol over dataset splits, CIRR submissions."""
