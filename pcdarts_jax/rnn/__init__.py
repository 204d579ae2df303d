"""The DARTS recurrent cell method (github.com/quark0/darts rnn/): its search and its
training from scratch on the library's epoch driver (pcdarts_jax.run.driver), over
the RNN space's pure steps (pcdarts_jax.spaces.rnn)."""
