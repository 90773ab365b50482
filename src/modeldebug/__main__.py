from modeldebug.cli import main

main()
