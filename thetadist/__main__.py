from thetadist.cli import main

main()
