"""What builds and starts jobs. compose.py runs on both sides; submit/ where `torchx run` runs; job/ inside each
replica."""
