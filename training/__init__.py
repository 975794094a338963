"""Train dense-only Keras classifiers and publish them as self-describing, versioned artifacts."""
