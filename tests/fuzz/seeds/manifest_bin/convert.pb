
m.safetensors2
out/f16