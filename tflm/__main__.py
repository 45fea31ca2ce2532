from tflm.cli import main

main()
