"""Top-level entrypoint: python run.py {train,evaluate} [key=value ...]

The TorchX components launch this file (via torchrun); it runs the same without TorchX.
"""

from launcher.job.main import main

if __name__ == "__main__":
    main()
