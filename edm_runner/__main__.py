from edm_runner.cli import main

main()
