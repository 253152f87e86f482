from hpo.cli import main

if __name__ == "__main__":  # a spawned training process imports the main module too
    main()
