from hpo._entry import main

if __name__ == "__main__":  # spawned child processes import this module too
    main()
