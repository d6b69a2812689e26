
m.safetensors*-
photos/
b.pngd.h5€ (0:a dog@Jf16