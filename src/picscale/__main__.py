from picscale.cli import main

main()
