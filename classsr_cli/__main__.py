from classsr_cli.cli import main

main()
