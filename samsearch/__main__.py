from samsearch.cli import main

main()
