from defacegan.train import main

main()
