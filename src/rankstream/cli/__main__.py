from rankstream.cli.main import main

main()
