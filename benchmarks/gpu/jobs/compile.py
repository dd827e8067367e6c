"""torch.compile on the GPU inside the image: triton builds its launcher with the base's C compiler and Python.h."""

import torch

assert torch.cuda.is_available(), "the job was given no usable GPU"


@torch.compile
def f(x):
    return torch.nn.functional.gelu(x) * 2 + 1


x = torch.randn(4096, device="cuda")
torch.testing.assert_close(f(x), torch.nn.functional.gelu(x) * 2 + 1)
print("torch.compile ok")
